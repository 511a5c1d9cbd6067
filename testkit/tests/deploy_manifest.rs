//! The example Kubernetes manifests in `deploy/kubernetes/`: every YAML document in them parses,
//! each Deployment runs `gotrace serve` as a sidecar and each `DaemonSet` runs `gotrace serve
//! --all` as a node agent, with exactly the privileges they need (`CAP_BPF`, `CAP_PERFMON`,
//! `CAP_SYS_PTRACE`, and `CAP_SYS_ADMIN` for kernels whose uprobe PMU does not honour
//! `CAP_PERFMON`; nothing privileged, no host path; the agent alone has `hostPID`) and with a
//! listening port, probes, memory limit and scrape annotations that agree. No cluster, no
//! kubectl, no network.
//!
//! `broken_manifests_are_rejected` checks the checks: each of a list of mistakes, made in a copy
//! of `sidecar.yaml` (or `daemonset.yaml`), must be caught, and by the check meant for it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::{Value, json};

/// The capabilities `gotrace serve` needs, without the `CAP_` prefix, sorted. `SYS_ADMIN` is for
/// kernels whose uprobe PMU does not honour `CAP_PERFMON` (6.18.44-fc: `perf_event_open` fails
/// with `EACCES` without it); `BPF` and `PERFMON` stay so that it can be dropped where it is not.
const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"];

/// gotrace's documented memory bound at the default `--max-keys`: a lower limit OOM-kills it.
const TRACER_MEMORY: u64 = 64 << 20;
/// The node agent's bound per traced process (docs/serve.md), on top of [`TRACER_MEMORY`].
const AGENT_MEMORY_PER_TARGET: u64 = 8 << 20;
/// `serve --all`'s default `--max-targets`.
const DEFAULT_MAX_TARGETS: u64 = 64;

/// Pod settings that no manifest here may turn on.
const FORBIDDEN_TRUE: [&str; 4] = ["privileged", "hostPID", "hostNetwork", "hostIPC"];

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The YAML files in `deploy/kubernetes/`, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let dir = manifest_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("cannot read a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    files
}

/// Every non-empty document of a YAML stream, as JSON values. Each goes through YAML's own value
/// first, which rejects duplicate keys (JSON's would keep the last one silently, as some YAML
/// tools do: a second `securityContext:` could override the first unseen).
fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let context = |e: &dyn std::fmt::Display| format!("document {}: {e}", index + 1);
        let yaml = serde_norway::Value::deserialize(document).map_err(|e| context(&e))?;
        let value = serde_json::to_value(yaml).map_err(|e| context(&e))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn get<'a>(value: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    value.pointer(pointer).ok_or_else(|| format!("{pointer} is missing"))
}

fn get_str<'a>(value: &'a Value, pointer: &str) -> Result<&'a str, String> {
    get(value, pointer)?
        .as_str()
        .ok_or_else(|| format!("{pointer} is not a string"))
}

fn expect(value: &Value, pointer: &str, expected: &Value) -> Result<(), String> {
    let found = get(value, pointer)?;
    if found == expected {
        Ok(())
    } else {
        Err(format!("{pointer} is {found}, expected {expected}"))
    }
}

/// The one setting of [`FORBIDDEN_TRUE`] a `DaemonSet` needs: the node agent must see every
/// process on the node.
const AGENT_HOST_PID: &str = "/spec/template/spec/hostPID";

/// Checks one document; returns whether it was a Deployment or a `DaemonSet`.
fn check_document(document: &Value) -> Result<bool, String> {
    let kind = get_str(document, "/kind")?;
    let mut forbidden = Vec::new();
    find_forbidden(document, "", &mut forbidden);
    forbidden.retain(|path| !(kind == "DaemonSet" && path == AGENT_HOST_PID));
    if !forbidden.is_empty() {
        return Err(format!("forbidden settings: {}", forbidden.join(", ")));
    }
    get_str(document, "/apiVersion")?;
    match kind {
        "Deployment" => check_deployment(document)?,
        "DaemonSet" => check_daemonset(document)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// A node agent: `serve --all`, the host's PID namespace, and a memory limit that holds the
/// agent at its `--max-targets`.
fn check_daemonset(daemonset: &Value) -> Result<(), String> {
    expect(daemonset, "/apiVersion", &json!("apps/v1"))?;
    expect(daemonset, AGENT_HOST_PID, &json!(true)).map_err(|e| format!("{e} (the agent must see every process)"))?;
    check_selector(daemonset)?;
    check_gotrace_pod(daemonset, check_agent_args, check_agent_resources)
}

/// `--all` and no single target; returns the `--listen` port.
fn check_agent_args(agent: &Value) -> Result<u16, String> {
    let args = args(agent);
    if !args.contains(&"--all") {
        return Err("no --all: a DaemonSet's gotrace follows every Go process on its node".to_owned());
    }
    if let Some(flag) = ["--pid", "--exe", "--name"].into_iter().find(|f| args.contains(f)) {
        return Err(format!("{flag} with --all: the agent follows every process"));
    }
    listen_port(&args)
}

/// The memory limit holds the agent's bound at its `--max-targets`.
fn check_agent_resources(agent: &Value) -> Result<(), String> {
    let args = args(agent);
    let max_targets = match flag_value(&args, "--max-targets") {
        Some(n) => n
            .parse::<u64>()
            .map_err(|e| format!("--max-targets {n} is not a number: {e}"))?,
        None => DEFAULT_MAX_TARGETS,
    };
    let needed = TRACER_MEMORY + AGENT_MEMORY_PER_TARGET * max_targets;
    let limit = get(agent, "/resources/limits/memory")?;
    let bytes = parse_quantity(limit).ok_or_else(|| format!("memory limit {limit} is not a quantity"))?;
    if bytes < needed {
        return Err(format!(
            "memory limit {limit} is below the agent's bound of {} MiB for --max-targets {max_targets}",
            needed >> 20
        ));
    }
    Ok(())
}

/// Collects the paths of `privileged: true` and the like, and of `hostPath` volumes, anywhere.
fn find_forbidden(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = format!("{path}/{key}");
                if (FORBIDDEN_TRUE.contains(&key.as_str()) && child == &Value::Bool(true)) || key == "hostPath" {
                    found.push(child_path.clone());
                }
                find_forbidden(child, &child_path, found);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                find_forbidden(child, &format!("{path}/{index}"), found);
            }
        }
        _ => {}
    }
}

fn check_deployment(deployment: &Value) -> Result<(), String> {
    expect(deployment, "/apiVersion", &json!("apps/v1"))?;
    expect(deployment, "/spec/template/spec/shareProcessNamespace", &json!(true))
        .map_err(|e| format!("{e} (the sidecar must see the app's process)"))?;
    check_selector(deployment)?;
    check_gotrace_pod(deployment, check_args, check_resources)
}

/// The pod template's one `gotrace serve` container: its arguments (by `check_args`, which
/// returns the listening port), privileges, memory (by `check_memory`), probes and ports, and
/// the pod's scrape annotations.
fn check_gotrace_pod(
    workload: &Value,
    check_args: fn(&Value) -> Result<u16, String>,
    check_memory: fn(&Value) -> Result<(), String>,
) -> Result<(), String> {
    let template = get(workload, "/spec/template")?;
    let pod = get(template, "/spec")?;
    let containers = get(pod, "/containers")?
        .as_array()
        .ok_or("/spec/template/spec/containers is not a list")?;
    let gotraces: Vec<&Value> = containers.iter().filter(|c| is_gotrace_serve(c)).collect();
    let [gotrace] = gotraces.as_slice() else {
        return Err(format!(
            "expected one container whose args start with `serve`, found {}",
            gotraces.len()
        ));
    };
    let name = get_str(gotrace, "/name")?;
    let context = |e: String| format!("container {name}: {e}");
    check_image(gotrace).map_err(context)?;
    let port = check_args(gotrace).map_err(context)?;
    check_security(pod, gotrace).map_err(context)?;
    check_memory(gotrace).map_err(context)?;
    check_probes(gotrace, port).map_err(context)?;
    check_ports(containers, gotrace, port).map_err(context)?;
    check_annotations(template, port)
}

/// The image `cargo xtask dist` builds, by the name README tells users to push it as: this
/// release's tag, so that the manifests never name an image of another release.
fn check_image(gotrace: &Value) -> Result<(), String> {
    let expected = format!("registry.example.com/gotrace:{}", env!("CARGO_PKG_VERSION"));
    let image = get_str(gotrace, "/image")?;
    if image == expected {
        Ok(())
    } else {
        Err(format!(
            "image {image}: expected {expected}, the image cargo xtask dist builds, as README pushes it"
        ))
    }
}

/// The selector's labels must be on the pod template, or the API server rejects the Deployment.
fn check_selector(deployment: &Value) -> Result<(), String> {
    let selector = get(deployment, "/spec/selector/matchLabels")?
        .as_object()
        .ok_or("/spec/selector/matchLabels is not a map")?;
    let labels = get(deployment, "/spec/template/metadata/labels")?;
    for (key, value) in selector {
        if labels.get(key) != Some(value) {
            return Err(format!("the pod template lacks the selector's label {key}: {value}"));
        }
    }
    Ok(())
}

fn args(container: &Value) -> Vec<&str> {
    container
        .get("args")
        .and_then(Value::as_array)
        .map(|args| args.iter().map(|a| a.as_str().unwrap_or_default()).collect())
        .unwrap_or_default()
}

fn is_gotrace_serve(container: &Value) -> bool {
    args(container).first() == Some(&"serve")
}

/// The value of `--flag VALUE` or `--flag=VALUE`.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(index, arg)| {
        if *arg == flag {
            args.get(index + 1).copied()
        } else {
            arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('='))
        }
    })
}

/// Checks the target selector and `--listen`; returns the listening port.
fn check_args(sidecar: &Value) -> Result<u16, String> {
    let args = args(sidecar);
    let selectors: Vec<&str> = ["--pid", "--exe", "--name"]
        .into_iter()
        .filter(|flag| flag_value(&args, flag).is_some_and(|v| !v.is_empty() && !v.starts_with("--")))
        .collect();
    if selectors.len() != 1 {
        return Err(format!(
            "expected one of --pid, --exe or --name with a value, found {selectors:?}"
        ));
    }
    listen_port(&args)
}

/// The port of `--listen`, which must not be loopback.
fn listen_port(args: &[&str]) -> Result<u16, String> {
    let listen = flag_value(args, "--listen")
        .ok_or("no --listen: the default, 127.0.0.1:9464, cannot be scraped from outside the pod")?;
    let address: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen} is not ADDR:PORT: {e}"))?;
    if address.ip().is_loopback() {
        return Err(format!(
            "--listen {listen} is a loopback address, unreachable from outside the pod"
        ));
    }
    Ok(address.port())
}

fn check_security(pod: &Value, sidecar: &Value) -> Result<(), String> {
    let context = get(sidecar, "/securityContext")?;
    let mut added = get(context, "/capabilities/add")?
        .as_array()
        .ok_or("capabilities.add is not a list")?
        .iter()
        .map(|c| c.as_str().map(|c| c.strip_prefix("CAP_").unwrap_or(c)))
        .collect::<Option<Vec<&str>>>()
        .ok_or("capabilities.add has a value that is not a string")?;
    added.sort_unstable();
    if added != CAPABILITIES {
        return Err(format!(
            "capabilities.add is {added:?}, expected exactly {CAPABILITIES:?}"
        ));
    }
    let dropped = get(context, "/capabilities/drop")?
        .as_array()
        .ok_or("capabilities.drop is not a list")?;
    if !dropped.contains(&json!("ALL")) {
        return Err(format!("capabilities.drop is {dropped:?}, expected it to contain ALL"));
    }
    expect(context, "/allowPrivilegeEscalation", &json!(false)).map_err(|e| format!("securityContext{e}"))?;
    expect(context, "/readOnlyRootFilesystem", &json!(true)).map_err(|e| format!("securityContext{e}"))?;
    // Added capabilities only take effect for uid 0 (Kubernetes sets no ambient capabilities),
    // so the user must be root, said explicitly rather than left to the image.
    let effective = |field: &str| {
        context
            .get(field)
            .or_else(|| pod.pointer(&format!("/securityContext/{field}")))
    };
    if effective("runAsUser") != Some(&json!(0)) {
        return Err(format!(
            "runAsUser is {:?}, expected 0: any other user loses the added capabilities",
            effective("runAsUser")
        ));
    }
    if effective("runAsNonRoot") == Some(&json!(true)) {
        return Err("runAsNonRoot is true, which forbids runAsUser 0".to_owned());
    }
    Ok(())
}

/// A Kubernetes memory quantity in bytes: an integer with an optional binary or decimal suffix.
fn parse_quantity(quantity: &Value) -> Option<u64> {
    if let Some(bytes) = quantity.as_u64() {
        return Some(bytes);
    }
    let text = quantity.as_str()?;
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

fn check_resources(sidecar: &Value) -> Result<(), String> {
    let limit = get(sidecar, "/resources/limits/memory")?;
    let bytes = parse_quantity(limit).ok_or_else(|| format!("memory limit {limit} is not a quantity"))?;
    if bytes < TRACER_MEMORY {
        return Err(format!(
            "memory limit {limit} is below gotrace's own bound of {} MiB",
            TRACER_MEMORY >> 20
        ));
    }
    Ok(())
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(number) = port.as_u64() {
        return Some(number);
    }
    let name = port.as_str()?;
    container
        .get("ports")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("containerPort")?
        .as_u64()
}

fn check_probes(sidecar: &Value, port: u16) -> Result<(), String> {
    for probe in ["readinessProbe", "livenessProbe"] {
        let http = get(sidecar, &format!("/{probe}/httpGet")).map_err(|e| format!("{probe}: {e}"))?;
        expect(http, "/path", &json!("/healthz")).map_err(|e| format!("{probe}: {e}"))?;
        let probe_port = get(http, "/port").map_err(|e| format!("{probe}: {e}"))?;
        if resolve_port(sidecar, probe_port) != Some(u64::from(port)) {
            return Err(format!("{probe} port {probe_port} is not the --listen port {port}"));
        }
    }
    Ok(())
}

/// The sidecar declares its port, and no other container of the pod (one network namespace)
/// declares the same one.
fn check_ports(containers: &[Value], sidecar: &Value, port: u16) -> Result<(), String> {
    let declares = |container: &Value| {
        container
            .get("ports")
            .and_then(Value::as_array)
            .is_some_and(|ports| ports.iter().any(|p| p.get("containerPort") == Some(&json!(port))))
    };
    if !declares(sidecar) {
        return Err(format!("ports does not declare the --listen port {port}"));
    }
    if let Some(other) = containers.iter().find(|c| *c != sidecar && declares(c)) {
        return Err(format!("container {} also uses port {port}", other["name"]));
    }
    Ok(())
}

/// The scrape hints on the pod template. Annotation values must be strings (an unquoted `true`
/// or `9464` in YAML is not, and the API server rejects it).
fn check_annotations(template: &Value, port: u16) -> Result<(), String> {
    let annotations = get(template, "/metadata/annotations")?;
    let port = port.to_string();
    let expected = [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", port.as_str()),
        ("prometheus.io/path", "/metrics"),
        ("profiles.grafana.com/memory.scrape", "true"),
        ("profiles.grafana.com/memory.port", port.as_str()),
        ("profiles.grafana.com/memory.path", "/debug/pprof/allocs"),
    ];
    for (key, value) in expected {
        match annotations.get(key) {
            Some(Value::String(found)) if found == value => {}
            found => return Err(format!("pod annotation {key} is {found:?}, expected \"{value}\"")),
        }
    }
    Ok(())
}

#[test]
fn manifests_are_valid() {
    let files = manifest_files();
    assert!(!files.is_empty(), "no YAML files in {}", manifest_dir().display());
    let mut deployments = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let documents = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!documents.is_empty(), "{} has no documents", file.display());
        for (index, document) in documents.iter().enumerate() {
            match check_document(document) {
                Ok(is_deployment) => deployments += usize::from(is_deployment),
                Err(e) => panic!("{} document {}: {e}", file.display(), index + 1),
            }
        }
    }
    assert!(deployments > 0, "no Deployment in {}", manifest_dir().display());
}

#[test]
fn yaml_streams_parse_document_by_document() {
    let documents = parse_documents("---\na: 1\n---\n---\nb: [x, \"9464\"]\n").expect("valid YAML");
    assert_eq!(documents, [json!({"a": 1}), json!({"b": ["x", "9464"]})]);
    assert!(parse_documents("a: [1, 2\n").is_err());
    assert!(parse_documents("a: 1\na: 2\n").is_err(), "duplicate keys must not pass");
}

#[test]
fn memory_quantities() {
    assert_eq!(parse_quantity(&json!("128Mi")), Some(128 << 20));
    assert_eq!(parse_quantity(&json!("1Gi")), Some(1 << 30));
    assert_eq!(parse_quantity(&json!("100M")), Some(100_000_000));
    assert_eq!(parse_quantity(&json!(67_108_864)), Some(64 << 20));
    assert_eq!(parse_quantity(&json!("lots")), None);
    assert_eq!(parse_quantity(&json!("0.5Gi")), None);
}

/// The first Deployment of `sidecar.yaml` and the JSON pointer of its gotrace container.
fn example() -> (Value, String) {
    let path = manifest_dir().join("sidecar.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let deployment = parse_documents(&text)
        .expect("sidecar.yaml parses")
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("sidecar.yaml has a Deployment");
    let index = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .position(is_gotrace_serve)
        .expect("a gotrace serve container");
    (deployment, format!("/spec/template/spec/containers/{index}"))
}

/// Unescapes one JSON pointer token.
fn token(key: &str) -> String {
    key.replace("~1", "/").replace("~0", "~")
}

/// Sets the value at `pointer` (its parent must exist), or removes it with `None`.
fn edit(document: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer with a parent");
    match (document.pointer_mut(parent), value) {
        (Some(Value::Object(map)), Some(value)) => {
            map.insert(token(key), value);
        }
        (Some(Value::Object(map)), None) => {
            assert!(map.remove(&token(key)).is_some(), "{pointer} is not there to remove");
        }
        (Some(Value::Array(items)), Some(value)) => items[key.parse::<usize>().expect("an index")] = value,
        _ => panic!("cannot edit {pointer}"),
    }
}

/// Short forms in the mistakes' pointers, expanded in this order (`{caps}` goes through `{sc}`);
/// `{s}` is the gotrace container, wherever it is in `sidecar.yaml`.
const SHORT_FORMS: [(&str, &str); 5] = [
    ("{pod}", "/spec/template/spec"),
    ("{app}", "/spec/template/spec/containers/0"),
    ("{caps}", "{sc}/capabilities"),
    ("{sc}", "{s}/securityContext"),
    ("{annotations}", "/spec/template/metadata/annotations"),
];

/// Mistakes to make in `sidecar.yaml`: a name, the JSON pointer to change, its new value as YAML
/// (`None`: remove it), and what the error that catches it must mention.
#[rustfmt::skip]
const MISTAKES: &[(&str, &str, Option<&str>, &str)] = &[
    ("wrong API version", "/apiVersion", Some("apps/v1beta2"), "/apiVersion"),
    ("PID namespace not shared", "{pod}/shareProcessNamespace", None, "shareProcessNamespace"),
    ("PID namespace: false", "{pod}/shareProcessNamespace", Some("false"), "shareProcessNamespace"),
    ("selector not on the pod", "/spec/selector/matchLabels/tier", Some("backend"), "selector"),
    ("privileged sidecar", "{sc}/privileged", Some("true"), "privileged"),
    ("privileged app", "{app}/securityContext", Some("{privileged: true}"), "privileged"),
    ("host PID namespace", "{pod}/hostPID", Some("true"), "hostPID"),
    ("host network", "{pod}/hostNetwork", Some("true"), "hostNetwork"),
    ("host path", "{pod}/volumes", Some("[{name: d, hostPath: {path: /sys}}]"), "hostPath"),
    ("not serve", "{s}/args/0", Some("attach"), "found 0"),
    ("another release's image", "{s}/image", Some("registry.example.com/gotrace:0.0.9"), "image"),
    ("no target", "{s}/args", Some("[serve, --listen, '0.0.0.0:9464']"), "--name"),
    ("two targets", "{s}/args", Some("[serve, --pid, '1', --name, x, --listen, '0.0.0.0:9464']"), "--name"),
    ("no --listen", "{s}/args", Some("[serve, --name, x]"), "no --listen"),
    ("loopback only", "{s}/args", Some("[serve, --name, x, --listen, '127.0.0.1:9464']"), "loopback"),
    ("bad address", "{s}/args", Some("[serve, --name, x, --listen, '9464']"), "ADDR:PORT"),
    ("another port", "{s}/args", Some("[serve, --name, x, --listen=0.0.0.0:9465]"), "--listen port 9465"),
    ("PERFMON missing", "{caps}/add", Some("[BPF, SYS_ADMIN, SYS_PTRACE]"), "capabilities.add"),
    ("SYS_ADMIN missing", "{caps}/add", Some("[BPF, PERFMON, SYS_PTRACE]"), "capabilities.add"),
    ("BPF missing", "{caps}/add", Some("[PERFMON, SYS_ADMIN, SYS_PTRACE]"), "capabilities.add"),
    ("one too many", "{caps}/add", Some("[BPF, PERFMON, SYS_ADMIN, SYS_PTRACE, NET_ADMIN]"), "capabilities.add"),
    ("one twice", "{caps}/add", Some("[BPF, CAP_BPF, PERFMON, SYS_ADMIN, SYS_PTRACE]"), "capabilities.add"),
    ("no capabilities", "{caps}", None, "capabilities"),
    ("nothing dropped", "{caps}/drop", Some("[NET_RAW]"), "drop"),
    ("escalation allowed", "{sc}/allowPrivilegeEscalation", Some("true"), "allowPrivilegeEscalation"),
    ("escalation unset", "{sc}/allowPrivilegeEscalation", None, "allowPrivilegeEscalation"),
    ("writable root", "{sc}/readOnlyRootFilesystem", None, "readOnlyRootFilesystem"),
    ("non-root user", "{sc}/runAsUser", Some("65534"), "runAsUser"),
    ("user left to the image", "{sc}/runAsUser", None, "runAsUser"),
    ("run as non-root", "{sc}/runAsNonRoot", Some("true"), "runAsNonRoot"),
    ("no memory limit", "{s}/resources/limits/memory", None, "memory"),
    ("memory limit too low", "{s}/resources/limits/memory", Some("32Mi"), "memory limit"),
    ("no readiness probe", "{s}/readinessProbe", None, "readinessProbe"),
    ("liveness on the app's port", "{s}/livenessProbe/httpGet/port", Some("8080"), "livenessProbe"),
    ("liveness on another path", "{s}/livenessProbe/httpGet/path", Some("/metrics"), "livenessProbe"),
    ("liveness on a named port", "{s}/livenessProbe/httpGet/port", Some("http"), "livenessProbe"),
    ("port not declared", "{s}/ports", None, "does not declare"),
    ("port clash with the app", "{app}/ports/0/containerPort", Some("9464"), "also uses port 9464"),
    ("no annotations", "{annotations}", None, "annotations"),
    ("no scrape annotation", "{annotations}/prometheus.io~1scrape", None, "prometheus.io/scrape"),
    ("scrape annotation a bool", "{annotations}/prometheus.io~1scrape", Some("true"), "prometheus.io/scrape"),
    ("wrong metrics port", "{annotations}/prometheus.io~1port", Some("'8080'"), "prometheus.io/port"),
    ("wrong metrics path", "{annotations}/prometheus.io~1path", Some("/debug/pprof/allocs"), "prometheus.io/path"),
    ("no profile path", "{annotations}/profiles.grafana.com~1memory.path", None, "memory.path"),
    ("profile port a number", "{annotations}/profiles.grafana.com~1memory.port", Some("9464"), "memory.port"),
];

fn assert_rejected(broken: &Value, name: &str, expected: &str) {
    match check_document(broken) {
        Ok(_) => panic!("{name}: not caught"),
        Err(e) => assert!(
            e.contains(expected),
            "{name}: caught as {e:?}, expected a mention of {expected:?}"
        ),
    }
}

/// Mistakes to make in `daemonset.yaml`, as [`MISTAKES`] (`{s}` is its gotrace container).
#[rustfmt::skip]
const AGENT_MISTAKES: &[(&str, &str, Option<&str>, &str)] = &[
    ("host PID namespace missing", "{pod}/hostPID", None, "hostPID"),
    ("host PID namespace off", "{pod}/hostPID", Some("false"), "hostPID"),
    ("host network", "{pod}/hostNetwork", Some("true"), "hostNetwork"),
    ("host path", "{pod}/volumes", Some("[{name: p, hostPath: {path: /proc}}]"), "hostPath"),
    ("privileged agent", "{sc}/privileged", Some("true"), "privileged"),
    ("no --all", "{s}/args", Some("[serve, --listen, '0.0.0.0:9464']"), "--all"),
    ("one target only", "{s}/args", Some("[serve, --all, --name, x, --listen, '0.0.0.0:9464']"), "--name"),
    ("loopback only", "{s}/args", Some("[serve, --all, --listen, '127.0.0.1:9464']"), "loopback"),
    ("too little memory for the default", "{s}/args", Some("[serve, --all, --listen, '0.0.0.0:9464']"), "--max-targets 64"),
    ("too little memory", "{s}/resources/limits/memory", Some("128Mi"), "memory limit"),
    ("SYS_PTRACE missing", "{caps}/add", Some("[BPF, PERFMON, SYS_ADMIN]"), "capabilities.add"),
    ("writable root", "{sc}/readOnlyRootFilesystem", None, "readOnlyRootFilesystem"),
    ("no liveness probe", "{s}/livenessProbe", None, "livenessProbe"),
    ("no scrape annotation", "{annotations}/prometheus.io~1scrape", None, "prometheus.io/scrape"),
];

/// The `DaemonSet` of `daemonset.yaml` and the JSON pointer of its gotrace container.
fn agent_example() -> (Value, String) {
    let path = manifest_dir().join("daemonset.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let daemonset = parse_documents(&text)
        .expect("daemonset.yaml parses")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("daemonset.yaml has a DaemonSet");
    let index = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .position(is_gotrace_serve)
        .expect("a gotrace serve container");
    (daemonset, format!("/spec/template/spec/containers/{index}"))
}

fn apply_mistakes(example: &Value, container: &str, mistakes: &[(&str, &str, Option<&str>, &str)]) {
    for (name, pointer, value, expected) in mistakes {
        let pointer = SHORT_FORMS
            .iter()
            .fold((*pointer).to_owned(), |p, (short, long)| p.replace(short, long))
            .replace("{s}", container);
        let value = value.map(|yaml| serde_norway::from_str(yaml).expect("a mistake's value parses"));
        let mut broken = example.clone();
        edit(&mut broken, &pointer, value);
        assert_rejected(&broken, name, expected);
    }
}

#[test]
fn broken_agent_manifests_are_rejected() {
    let (example, agent) = agent_example();
    assert_eq!(check_document(&example), Ok(true), "the example itself must pass");
    apply_mistakes(&example, &agent, AGENT_MISTAKES);
    // A Deployment may not take the host's PID namespace, though a DaemonSet may.
    let (mut sidecar, _) = self::example();
    edit(&mut sidecar, AGENT_HOST_PID, Some(json!(true)));
    assert_rejected(&sidecar, "a sidecar in the host PID namespace", "hostPID");
}

#[test]
fn broken_manifests_are_rejected() {
    let (example, sidecar) = example();
    assert_eq!(check_document(&example), Ok(true), "the example itself must pass");
    apply_mistakes(&example, &sidecar, MISTAKES);
    let mut broken = example.clone();
    let copy = broken.pointer(&sidecar).expect("the sidecar").clone();
    if let Some(Value::Array(containers)) = broken.pointer_mut("/spec/template/spec/containers") {
        containers.push(copy);
    }
    assert_rejected(&broken, "two sidecars", "found 2");
}

/// The scrape configurations in `deploy/scrape/` parse, and point at what the agent serves: its
/// pods by their label, port 9464, `/metrics` and `/debug/pprof/allocs` (no Prometheus, Alloy or
/// Parca here runs them: Debian's Prometheus is built without Kubernetes discovery).
#[test]
fn scrape_examples_point_at_the_agent() {
    let dir = manifest_dir().join("../scrape");
    let read = |name: &str| {
        fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("cannot read deploy/scrape/{name}: {e}"))
    };
    let (agent, _) = agent_example();
    let label = get_str(&agent, "/spec/template/metadata/labels/app.kubernetes.io~1name").expect("the agent's label");
    let port = check_agent_args(&agent["spec"]["template"]["spec"]["containers"][0]).expect("the agent's port");
    for name in ["prometheus.yml", "parca.yaml"] {
        let documents = parse_documents(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let [config] = documents.as_slice() else {
            panic!("{name}: expected one document");
        };
        let job = &config["scrape_configs"][0];
        let keep = job["relabel_configs"]
            .as_array()
            .expect("relabel_configs")
            .iter()
            .find(|rule| rule["action"] == "keep")
            .expect("a keep rule");
        assert_eq!(keep["regex"], label, "{name}");
        let text = read(name);
        // The port as a number, or from the pod's annotation (which names it: check_annotations).
        assert!(
            text.contains("__meta_kubernetes_pod_ip")
                && (text.contains(&format!("$1:{port}"))
                    || text.contains("__meta_kubernetes_pod_annotation_prometheus_io_port")),
            "{name}: the pod's address and port {port}"
        );
        if name == "parca.yaml" {
            assert_eq!(
                job["profiling_config"]["pprof_config"]["memory"]["path"], "/debug/pprof/allocs",
                "{name}"
            );
        }
    }
    let alloy = read("alloy.alloy");
    for needle in [
        format!("label = \"app.kubernetes.io/name={label}\""),
        format!("replacement   = \"$1:{port}\""),
        "path    = \"/debug/pprof/allocs\"".to_owned(),
        "forward_to = [pyroscope.write.default.receiver]".to_owned(),
    ] {
        assert!(alloy.contains(&needle), "alloy.alloy lacks {needle}");
    }
}
