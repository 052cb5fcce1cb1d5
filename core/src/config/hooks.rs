//! Server hooks: the Python functions a user names (`--post-fork myapp.hooks:post_fork`) and
//! the server calls at points of a process's life, as gunicorn's `post_fork`, `worker_exit`,
//! ... do. This module is the pure part: what a hook setting is, which hooks exist, in which
//! process each runs and what it is given. The server runs them (`wsgiscale_sidecar::hooks`).

use std::path::PathBuf;
use std::str::FromStr;

/// Where a hook function lives: `MODULE:FUNCTION` (imported as `import MODULE`), or
/// `PATH:FUNCTION` for a Python file loaded by path, as gunicorn loads `gunicorn.conf.py`
/// (a target containing `/` or ending in `.py` is a path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HookSpec {
    /// The module or file.
    pub target: HookTarget,
    /// The function's name in it.
    pub function: String,
}

/// A module name or a file path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HookTarget {
    /// A dotted module name, found on `sys.path`.
    Module(String),
    /// A Python source file; a relative path is taken from the directory the server was
    /// started in.
    File(PathBuf),
}

fn is_identifier(t: &str) -> bool {
    !t.is_empty()
        && !t.starts_with(|c: char| c.is_ascii_digit())
        && t.chars().all(|c| c.is_alphanumeric() || c == '_')
}

impl FromStr for HookSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, function) = s.rsplit_once(':').ok_or_else(|| {
            format!("{s:?} is not MODULE:FUNCTION or PATH.py:FUNCTION (e.g. myapp.hooks:post_fork)")
        })?;
        if !is_identifier(function) {
            return Err(format!("{s:?}: {function:?} is not a Python function name"));
        }
        let target = if target.contains('/') || target.ends_with(".py") {
            if target.contains('\0') {
                return Err(format!("{s:?}: the path contains a NUL byte"));
            }
            HookTarget::File(PathBuf::from(target))
        } else if !target.is_empty() && target.split('.').all(is_identifier) {
            HookTarget::Module(target.to_string())
        } else {
            return Err(format!(
                "{s:?}: {target:?} is neither a dotted module name nor a path to a .py file"
            ));
        };
        Ok(HookSpec {
            target,
            function: function.to_string(),
        })
    }
}

impl std::fmt::Display for HookSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            HookTarget::Module(m) => write!(f, "{m}:{}", self.function),
            HookTarget::File(p) => write!(f, "{}:{}", p.display(), self.function),
        }
    }
}

crate::config::text_serde!(HookSpec);

/// The hooks, by the point at which they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// In the fork server, once it has loaded the app (when preloading) and before it forks
    /// a worker; again in each new fork server of a reload. `(server)`.
    PostLoad,
    /// In the new fork server of a reload (SIGHUP), after `post-load`. `(server)`.
    OnReload,
    /// In a new worker right after the fork, before it imports the app (without preload) or
    /// serves anything. `(server, worker)`.
    PostFork,
    /// In a new worker once the app is loaded, before its first request. `(worker)`.
    PostWorkerInit,
    /// In a worker that stops normally (retired, recycled, shutdown), before `atexit`.
    /// Not run when a worker is killed (`--timeout`, a crash). `(server, worker)`.
    WorkerExit,
    /// In the worker before the app is called for a request. `(worker, req)`.
    PreRequest,
    /// In the worker after the response was produced and the app's iterable closed.
    /// `(worker, req, environ, resp)`.
    PostRequest,
}

impl Hook {
    /// Every hook, in the order of a process's life.
    pub const ALL: [Hook; 7] = [
        Hook::PostLoad,
        Hook::OnReload,
        Hook::PostFork,
        Hook::PostWorkerInit,
        Hook::WorkerExit,
        Hook::PreRequest,
        Hook::PostRequest,
    ];

    /// The setting's name (`--post-fork`, `post-fork:` in the file).
    pub fn setting(self) -> &'static str {
        match self {
            Hook::PostLoad => "post-load",
            Hook::OnReload => "on-reload",
            Hook::PostFork => "post-fork",
            Hook::PostWorkerInit => "post-worker-init",
            Hook::WorkerExit => "worker-exit",
            Hook::PreRequest => "pre-request",
            Hook::PostRequest => "post-request",
        }
    }

    /// The positional arguments the hook is given (a function may take fewer: the first
    /// ones it accepts are passed), the same as the gunicorn hook of the same name.
    pub fn arguments(self) -> &'static [&'static str] {
        match self {
            Hook::PostLoad | Hook::OnReload => &["server"],
            Hook::PostFork | Hook::WorkerExit => &["server", "worker"],
            Hook::PostWorkerInit => &["worker"],
            Hook::PreRequest => &["worker", "req"],
            Hook::PostRequest => &["worker", "req", "environ", "resp"],
        }
    }

    /// Whether the hook runs in the fork server (else in a worker).
    pub fn in_fork_server(self) -> bool {
        matches!(self, Hook::PostLoad | Hook::OnReload)
    }

    /// What happens when the hook raises: its traceback is logged, and then this.
    pub fn on_failure(self) -> &'static str {
        match self {
            Hook::PostLoad | Hook::OnReload => "the fork server goes on and forks workers",
            Hook::PostFork | Hook::PostWorkerInit => {
                "the worker exits without serving (exit code 5) and is replaced with the crash-loop backoff"
            }
            Hook::WorkerExit => "the worker exits as it would have",
            Hook::PreRequest => "the request is served all the same",
            Hook::PostRequest => "nothing more: the response is already sent",
        }
    }
}

/// The configured hooks: at most one function per [`Hook`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hooks {
    /// `--post-load`.
    pub post_load: Option<HookSpec>,
    /// `--on-reload`.
    pub on_reload: Option<HookSpec>,
    /// `--post-fork`.
    pub post_fork: Option<HookSpec>,
    /// `--post-worker-init`.
    pub post_worker_init: Option<HookSpec>,
    /// `--worker-exit`.
    pub worker_exit: Option<HookSpec>,
    /// `--pre-request`.
    pub pre_request: Option<HookSpec>,
    /// `--post-request`.
    pub post_request: Option<HookSpec>,
}

impl Hooks {
    /// The function configured for `hook`.
    pub fn get(&self, hook: Hook) -> Option<&HookSpec> {
        match hook {
            Hook::PostLoad => self.post_load.as_ref(),
            Hook::OnReload => self.on_reload.as_ref(),
            Hook::PostFork => self.post_fork.as_ref(),
            Hook::PostWorkerInit => self.post_worker_init.as_ref(),
            Hook::WorkerExit => self.worker_exit.as_ref(),
            Hook::PreRequest => self.pre_request.as_ref(),
            Hook::PostRequest => self.post_request.as_ref(),
        }
    }

    /// Every configured hook with its function.
    pub fn configured(&self) -> impl Iterator<Item = (Hook, &HookSpec)> {
        Hook::ALL
            .into_iter()
            .filter_map(|h| self.get(h).map(|s| (h, s)))
    }

    /// Whether no hook is configured.
    pub fn is_empty(&self) -> bool {
        self.configured().next().is_none()
    }

    /// The hooks with relative file paths made absolute by `abs` (the server does it against
    /// the directory it was started in, before the fork server changes into `--chdir`).
    pub fn with_paths(&self, abs: impl Fn(&std::path::Path) -> PathBuf) -> Hooks {
        let fix = |s: &Option<HookSpec>| {
            s.clone().map(|mut s| {
                if let HookTarget::File(p) = &s.target {
                    s.target = HookTarget::File(abs(p));
                }
                s
            })
        };
        Hooks {
            post_load: fix(&self.post_load),
            on_reload: fix(&self.on_reload),
            post_fork: fix(&self.post_fork),
            post_worker_init: fix(&self.post_worker_init),
            worker_exit: fix(&self.worker_exit),
            pre_request: fix(&self.pre_request),
            post_request: fix(&self.post_request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_modules_or_files_and_print_back() {
        let cases = [
            (
                "myapp.hooks:post_fork",
                Some(HookTarget::Module("myapp.hooks".into())),
            ),
            ("hooks:f", Some(HookTarget::Module("hooks".into()))),
            (
                "gunicorn.conf.py:post_fork",
                Some(HookTarget::File("gunicorn.conf.py".into())),
            ),
            (
                "/etc/app/conf.py:when_ready",
                Some(HookTarget::File("/etc/app/conf.py".into())),
            ),
            ("./hooks/x:f", Some(HookTarget::File("./hooks/x".into()))),
            ("nocolon", None),
            ("a.b:", None),
            (":f", None),
            ("a-b:f", None),
            ("a..b:f", None),
            ("a:1f", None),
            ("a:f-g", None),
        ];
        for (text, want) in cases {
            let got = text.parse::<HookSpec>();
            assert_eq!(got.as_ref().ok().map(|s| s.target.clone()), want, "{text}");
            if let Ok(spec) = got {
                assert_eq!(spec.to_string(), text);
                assert_eq!(spec.to_string().parse::<HookSpec>(), Ok(spec));
            }
        }
    }

    #[test]
    fn every_hook_is_named_and_described_once() {
        let mut names: Vec<_> = Hook::ALL.iter().map(|h| h.setting()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Hook::ALL.len());
        for h in Hook::ALL {
            assert!(!h.arguments().is_empty());
            assert!(!h.on_failure().is_empty());
        }
        assert!(Hook::PostLoad.in_fork_server() && !Hook::PostFork.in_fork_server());
    }

    #[test]
    fn relative_file_paths_are_made_absolute_and_modules_kept() {
        let hooks = Hooks {
            post_fork: Some("conf.py:post_fork".parse().expect("valid")),
            worker_exit: Some("app.hooks:bye".parse().expect("valid")),
            ..Hooks::default()
        };
        let fixed = hooks.with_paths(|p| std::path::Path::new("/srv").join(p));
        assert_eq!(
            fixed.post_fork.expect("kept").to_string(),
            "/srv/conf.py:post_fork"
        );
        assert_eq!(fixed.worker_exit, hooks.worker_exit);
        assert_eq!(
            hooks.configured().map(|(h, _)| h).collect::<Vec<_>>(),
            vec![Hook::PostFork, Hook::WorkerExit]
        );
    }
}
