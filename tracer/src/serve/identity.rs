//! Who a process is, for the node agent's labels: its container and Kubernetes pod, read from
//! its cgroup path, and its pod's name and namespace where they can be read cheaply.
//!
//! Container runtimes name a container's cgroup after its id, and the kubelet names a pod's
//! after its uid, in a few common shapes (cgroup v2, `/proc/PID/cgroup` line `0::PATH`):
//!
//! | runtime, cgroup driver | path |
//! | --- | --- |
//! | containerd, systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | CRI-O, systemd | `…/kubepods-pod<uid>.slice/crio-<id>.scope` |
//! | containerd or CRI-O, cgroupfs | `/kubepods/burstable/pod<uid>/<id>` |
//! | Docker, systemd / cgroupfs | `/system.slice/docker-<id>.scope` / `/docker/<id>` |
//! | Podman | `…/libpod-<id>.scope` |
//!
//! A container id is 64 lowercase hex digits. The pod's name is the `HOSTNAME` the kubelet
//! sets in every container's environment (unless the pod uses the host's network, or the
//! image overrides it); its namespace is in the service-account token mount, when the pod has
//! one (`/var/run/secrets/kubernetes.io/serviceaccount/namespace`, read through
//! `/proc/PID/root`: [`pod_namespace`]). Neither needs the API server.

use serde::Serialize;

/// Where a process runs, as far as its cgroup and environment say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// The cgroup v2 path (`/proc/PID/cgroup`'s `0::` line), empty when unknown.
    pub cgroup: String,
    /// The container id (64 hex digits), when the cgroup path names one.
    pub container: Option<String>,
    /// The Kubernetes pod uid, when the cgroup path names one.
    pub pod_uid: Option<String>,
    /// The pod's name: `HOSTNAME` in the process's environment, read only for a process in a pod.
    pub pod: Option<String>,
    /// The pod's namespace, from its service-account mount, when it has one.
    pub namespace: Option<String>,
}

impl Placement {
    /// Reads process `pid`'s placement. What cannot be read stays `None`.
    #[must_use]
    pub fn of_process(pid: u32) -> Self {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| unified_path(&text).map(str::to_owned))
            .unwrap_or_default();
        let (container, pod_uid) = parse_cgroup_path(&cgroup);
        let (pod, namespace) = if pod_uid.is_some() {
            (pod_name(pid), pod_namespace(pid))
        } else {
            (None, None)
        };
        Self {
            cgroup,
            container,
            pod_uid,
            pod,
            namespace,
        }
    }

    /// The shortest name of the pod for a label: its name, else its uid.
    #[must_use]
    pub fn pod_label(&self) -> &str {
        self.pod.as_deref().or(self.pod_uid.as_deref()).unwrap_or("")
    }
}

/// The path of the cgroup v2 line (`0::PATH`) of `/proc/PID/cgroup`.
fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The container id and pod uid named by a cgroup path, innermost container first.
#[must_use]
pub fn parse_cgroup_path(path: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if let Some(id) = container_id(component) {
            container = Some(id.to_owned());
        } else if let Some(uid) = pod_uid(component) {
            pod = Some(uid);
        }
    }
    (container, pod)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`,
/// or a bare `<id>` (cgroupfs drivers).
fn container_id(component: &str) -> Option<&str> {
    let bare = component.strip_suffix(".scope").unwrap_or(component);
    let id = ["cri-containerd-", "crio-", "docker-", "libpod-", "containerd-"]
        .iter()
        .find_map(|prefix| bare.strip_prefix(prefix))
        .unwrap_or(bare);
    let is_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    is_id.then_some(id)
}

/// `kubepods-<qos>-pod<uid>.slice` (systemd driver: the uid's dashes are underscores) or
/// `pod<uid>` (cgroupfs driver).
fn pod_uid(component: &str) -> Option<String> {
    let systemd = component
        .strip_suffix(".slice")
        .and_then(|slice| slice.starts_with("kubepods").then_some(slice))
        .and_then(|slice| slice.rsplit_once("-pod"))
        .map(|(_, uid)| uid.replace('_', "-"));
    let uid = systemd.or_else(|| component.strip_prefix("pod").map(str::to_owned))?;
    // A uid is 36 characters of hex and dashes (8-4-4-4-12).
    let is_uid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    is_uid.then_some(uid)
}

/// `HOSTNAME` from the process's initial environment (`/proc/PID/environ`).
fn pod_name(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"HOSTNAME="))
        .and_then(|name| std::str::from_utf8(name).ok())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

/// The namespace of the pod's service account, as mounted into the container.
///
/// Read through `/proc/PID/root`, where an absolute symbolic link would resolve against
/// gotrace's own root, not the container's: in many images `/var/run` is a link to `/run`,
/// and following it would read the agent's own service account. So the kubelet's mount is
/// looked for at `/run/secrets/…` (where it lands when `/var/run` is that link) and at
/// `/var/run/secrets/…`, and a path is read only if none of its directories is a link.
fn pod_namespace(pid: u32) -> Option<String> {
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    ["run", "var/run"].into_iter().find_map(|base| {
        let path = root.join(base).join("secrets/kubernetes.io/serviceaccount/namespace");
        let mut dir = root.clone();
        for part in base.split('/').chain(["secrets", "kubernetes.io", "serviceaccount"]) {
            dir.push(part);
            if std::fs::symlink_metadata(&dir).ok()?.file_type().is_symlink() {
                return None;
            }
        }
        let text = std::fs::read_to_string(path).ok()?;
        let namespace = text.trim();
        (!namespace.is_empty() && namespace.len() <= 253).then(|| namespace.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b1c0d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c";
    const UID: &str = "8a4e4f32-2c1b-4a5e-9d61-0f3c2b1a9e87";

    #[test]
    fn containerd_with_the_systemd_driver() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup_path(&path), (Some(ID.to_owned()), Some(UID.to_owned())));
    }

    #[test]
    fn crio_and_a_guaranteed_pod() {
        let path = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup_path(&path), (Some(ID.to_owned()), Some(UID.to_owned())));
    }

    /// Seen from an agent in a cgroup namespace of its own, other pods' paths climb out of it.
    #[test]
    fn paths_from_a_private_cgroup_namespace() {
        let path = format!(
            "/../../kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup_path(&path), (Some(ID.to_owned()), Some(UID.to_owned())));
    }

    #[test]
    fn cgroupfs_driver() {
        let path = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(parse_cgroup_path(&path), (Some(ID.to_owned()), Some(UID.to_owned())));
    }

    #[test]
    fn docker_and_podman_without_a_pod() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
        ] {
            assert_eq!(parse_cgroup_path(&path), (Some(ID.to_owned()), None), "{path}");
        }
    }

    #[test]
    fn hosts_own_services_have_neither() {
        for path in [
            "/",
            "/system.slice/ssh.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/kubepods.slice/kubepods-burstable.slice",
            // A pod's own cgroup: the pod but no container.
        ] {
            assert_eq!(parse_cgroup_path(path), (None, None), "{path}");
        }
        let (container, pod) = parse_cgroup_path(&format!("/kubepods/pod{UID}"));
        assert_eq!((container, pod.as_deref()), (None, Some(UID)));
    }

    #[test]
    fn not_quite_ids_are_not_taken() {
        // 63 digits, upper case, a uid without its dashes.
        assert_eq!(parse_cgroup_path(&format!("/docker/{}", &ID[1..])), (None, None));
        assert_eq!(
            parse_cgroup_path(&format!("/docker/{}", ID.to_uppercase())),
            (None, None)
        );
        assert_eq!(
            parse_cgroup_path("/kubepods/pod8a4e4f322c1b4a5e9d610f3c2b1a9e87"),
            (None, None)
        );
    }

    #[test]
    fn the_unified_line_is_found_among_v1_lines() {
        let text = "12:memory:/foo\n0::/system.slice/x.service\n";
        assert_eq!(unified_path(text), Some("/system.slice/x.service"));
        assert_eq!(unified_path("1:name=systemd:/\n"), None);
    }

    #[test]
    fn own_process_reads_without_error() {
        let me = Placement::of_process(std::process::id());
        assert!(me.cgroup.starts_with('/'), "{me:?}");
    }
}
