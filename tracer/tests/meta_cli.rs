//! `gotrace --version`, `gotrace doctor` and `gotrace generate` as a user (or a packager) runs
//! them: exit status and what they print.

mod common;

use std::process::Output;

use common::{gotrace, scratch};

fn run(args: &[&str]) -> Output {
    gotrace().args(args).output().expect("running gotrace")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_names_the_build_and_checks_the_kernel_features() {
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert!(out.status.success(), "{flag}: {}", String::from_utf8_lossy(&out.stderr));
        let text = stdout(&out);
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("gotrace {} (commit ", env!("CARGO_PKG_VERSION"))),
            "{first}"
        );
        // This test runs from a git checkout: the commit is known.
        assert!(!first.contains("commit unknown"), "{first}");
        // Each kernel feature is a line with a verdict, and this machine has them all.
        for feature in ["kernel", "bpf(2)", "uprobe PMU", "helpers"] {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(feature.split(' ').next().unwrap()))
                .unwrap_or_else(|| panic!("no {feature} line in:\n{text}"));
            assert!(line.trim_start().starts_with("ok "), "{line}");
        }
        assert!(text.contains("bpf_loop (5.17)"), "{text}");
    }
}

#[test]
fn no_command_is_a_usage_error_with_help() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"));
}

/// As root (CI), doctor loads the probes into the verifier and says yes; as an unprivileged
/// user it names the missing privileges and exits 1.
#[test]
fn doctor_says_whether_this_host_can_trace() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let out = run(&["doctor"]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(stdout(&out).contains("FAIL  privileges"), "{}", stdout(&out));
        return;
    }
    let out = run(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let verifier = text
        .lines()
        .find(|l| l.contains(" verifier "))
        .expect("a verifier line");
    assert!(
        verifier.contains("programs passed this kernel's verifier"),
        "{verifier}"
    );
    assert!(text.lines().last().unwrap().starts_with("verdict: yes"), "{text}");

    // The same binary as nobody, without capabilities (setpriv from util-linux).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_gotrace"))
        .arg("doctor")
        .output()
        .expect("setpriv runs");
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("FAIL  privileges"), "{text}");
    assert!(
        text.contains("not checked: loading the probes needs the privileges above"),
        "{text}"
    );
    assert!(text.lines().last().unwrap().starts_with("verdict: no"), "{text}");
}

#[test]
fn generate_writes_man_pages_and_completions() {
    let dir = scratch("generate");
    let out = run(&["generate", "man", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for command in [
        "gotrace",
        "gotrace-attach",
        "gotrace-serve",
        "gotrace-doctor",
        "gotrace-inspect",
    ] {
        let page =
            std::fs::read_to_string(dir.join(format!("{command}.1"))).unwrap_or_else(|e| panic!("{command}.1: {e}"));
        assert!(
            page.starts_with(".ie") || page.contains(".TH"),
            "{command}.1 is not roff"
        );
        assert!(page.contains(&format!(".TH {command}")), "{command}.1 has no title");
    }
    assert!(
        !dir.join("gotrace-generate.1").exists(),
        "the hidden command got a page"
    );
    let attach = std::fs::read_to_string(dir.join("gotrace-attach.1")).unwrap();
    assert!(attach.contains("duration"), "the attach page lacks its options");

    for (shell, file, needle) in [
        ("bash", "gotrace.bash", "complete -F"),
        ("zsh", "_gotrace", "#compdef gotrace"),
        ("fish", "gotrace.fish", "complete -c gotrace"),
    ] {
        let out = run(&["generate", shell, dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(needle), "{file} lacks {needle:?}");
        assert!(text.contains("doctor"), "{file} does not complete doctor");
    }
}

/// Without `CAP_SYS_ADMIN` (dropped by `capsh`), doctor's verdict must agree with what really
/// happens: it says yes exactly when `gotrace attach` to a running Go program works with the
/// same privileges. (On the 6.18 kernel of these machines it does not: the uprobe PMU refuses
/// `CAP_PERFMON` alone, and doctor's "uprobe attach" line says so.)
#[test]
fn doctor_agrees_with_attach_under_reduced_capabilities() {
    let Some(_lock) = testkit::root_only("doctor_agrees_with_attach_under_reduced_capabilities") else {
        return;
    };
    let fixture = testkit::fixture("1.27", "default");
    let mut target = std::process::Command::new(&fixture.path)
        .arg("loop")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the fixture");
    let gotrace = env!("CARGO_BIN_EXE_gotrace");
    let without_sys_admin = |command: String| {
        std::process::Command::new("capsh")
            .args(["--drop=cap_sys_admin", "--", "-c"])
            .arg(format!("exec {command}"))
            .output()
            .expect("capsh runs")
    };
    let doctor = without_sys_admin(format!("'{gotrace}' doctor"));
    let attach = without_sys_admin(format!("'{gotrace}' attach {} -d 1s --format json -q", target.id()));
    let _ = target.kill();
    let _ = target.wait();
    let report = stdout(&doctor);
    let privileges = report
        .lines()
        .find(|l| l.contains(" privileges "))
        .expect("a privileges line");
    assert!(
        privileges.contains("CAP_PERFMON") && !privileges.contains("CAP_SYS_ADMIN"),
        "{privileges}"
    );
    assert_eq!(
        doctor.status.success(),
        attach.status.success(),
        "doctor says {:?} but attach {}:\n{report}\nattach stderr: {}",
        report.lines().last(),
        if attach.status.success() { "worked" } else { "failed" },
        String::from_utf8_lossy(&attach.stderr)
    );
    if !doctor.status.success() {
        assert!(report.contains("FAIL  uprobe attach"), "{report}");
    }
}
