//! What a Go function's name says about it.

/// The package of a fully qualified Go function name: `runtime.(*mcache).refill` → `runtime`,
/// `internal/runtime/maps.(*Map).putSlotSmall` → `internal/runtime/maps`,
/// `main.Map[encoding/json.Number]` → `main`,
/// `gopkg.in/yaml%2ev3.(*parser).parse` → `gopkg.in/yaml%2ev3` (the linker escapes dots in
/// the last element of an import path).
#[must_use]
pub fn package_of(function: &str) -> &str {
    let head = function.split('[').next().unwrap_or(function);
    let slash = head.rfind('/').map_or(0, |i| i + 1);
    match head[slash..].find('.') {
        Some(dot) => &function[..slash + dot],
        None => head,
    }
}

/// Whether a package is the Go runtime: `runtime` itself, or `internal/runtime/...` (where
/// Go 1.24+ keeps its maps, atomics and system calls). `runtime/pprof`, `runtime/debug` and
/// other packages under `runtime/` are libraries, not the runtime.
#[must_use]
pub fn is_runtime_package(package: &str) -> bool {
    package == "runtime"
        || package == "internal/runtime"
        || package.starts_with("internal/runtime/")
        || package.starts_with("runtime/internal/")
}

/// Whether a function is named as the runtime's ([`is_runtime_package`] of its package).
#[must_use]
pub fn is_runtime_function(function: &str) -> bool {
    is_runtime_package(package_of(function))
}

/// A guess at the module root of a main package's import path: on a hosting site whose
/// modules are `host/owner/repo`, those three elements
/// (`github.com/evanw/esbuild/cmd/esbuild` → `github.com/evanw/esbuild`); elsewhere, what
/// comes before a `/cmd/` element, Go's convention for commands (`filippo.io/age/cmd/age` →
/// `filippo.io/age`); else the path as it is.
#[must_use]
pub fn module_root(package: &str) -> &str {
    const HOSTS: &[&str] = &[
        "github.com/",
        "gitlab.com/",
        "bitbucket.org/",
        "golang.org/x/",
        "codeberg.org/",
    ];
    if !HOSTS.iter().any(|h| package.starts_with(h)) {
        return package.split_once("/cmd/").map_or(package, |(root, _)| root);
    }
    let mut slashes = package.match_indices('/').map(|(i, _)| i);
    match slashes.nth(2) {
        Some(end) => &package[..end],
        None => package,
    }
}

/// Whether a function belongs to the main module `module` (see
/// [`crate::GoBinary::main_module`]): package `main`, the module's packages, or, with no
/// module known, package `main` only.
#[must_use]
pub fn in_main_module(function: &str, module: Option<&str>) -> bool {
    let package = package_of(function);
    package == "main"
        || module.is_some_and(|m| package == m || package.strip_prefix(m).is_some_and(|rest| rest.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages() {
        assert_eq!(package_of("runtime.(*mcache).refill"), "runtime");
        assert_eq!(
            package_of("internal/runtime/maps.(*Map).putSlotSmall"),
            "internal/runtime/maps"
        );
        assert_eq!(package_of("main.Map[encoding/json.Number]"), "main");
        assert_eq!(package_of("runtime/pprof.writeHeap"), "runtime/pprof");
        assert_eq!(package_of("gopkg.in/yaml%2ev3.(*parser).parse"), "gopkg.in/yaml%2ev3");
        assert!(is_runtime_function("internal/runtime/maps.newarray"));
        assert!(is_runtime_function("runtime.mallocgc"));
        assert!(!is_runtime_function("runtime/pprof.writeHeap"));
        assert!(!is_runtime_function("reflect.unsafe_New"));
        assert!(!is_runtime_function("main.main"));
        assert!(!is_runtime_function("example.com/runtime.New"));
    }

    #[test]
    fn main_modules() {
        assert_eq!(
            module_root("github.com/evanw/esbuild/cmd/esbuild"),
            "github.com/evanw/esbuild"
        );
        assert_eq!(module_root("github.com/gohugoio/hugo"), "github.com/gohugoio/hugo");
        assert_eq!(module_root("filippo.io/age/cmd/age"), "filippo.io/age");
        assert_eq!(module_root("example.com/tool"), "example.com/tool");
        let hugo = Some("github.com/gohugoio/hugo");
        assert!(in_main_module("github.com/gohugoio/hugo/hugolib.(*Site).render", hugo));
        assert!(in_main_module("main.main", hugo));
        assert!(!in_main_module("github.com/gohugoio/hugoext.F", hugo));
        assert!(!in_main_module("strings.(*Builder).grow", hugo));
        assert!(in_main_module("main.grow", None));
        assert!(!in_main_module("fmt.Sprintf", None));
    }
}
