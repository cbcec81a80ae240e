//! The kernel's counts, for the whole machine or for each user, of objects each run's memory
//! cgroup already pays for.
//!
//! An open file, an asynchronous-I/O event, a pseudo-terminal, an inotify instance or watch and
//! an epoll watch are counted twice: in the memory of the cgroup whose task made them, and
//! against a count that nothing divides among cgroups: the whole machine's (`fs.file-max`,
//! `fs.aio-max-nr`, `kernel.pty.max`) or a user's (`fs.inotify.*`, `fs.epoll.max_user_watches`,
//! shared by every run of one `--job-user`). A run within its own memory bound could take all
//! of one (found by reviews: every AIO event of the machine, 65,536, for about 2 MiB of a run's
//! memory; every file, 2.4 million, a tenth of the memory's worth, for about 540 MiB; all 128
//! inotify instances of its user for 128 KiB), and then every other process on the node (or of
//! the user), other tenants' runs among them, could open none (runs' own pseudo-terminals, 256
//! each, share the 3,072 the kernel leaves beside the machine's own: twelve runs of a tenant
//! could take them from every other run). A node that runs commands under memory bounds lifts
//! these counts to the kernel's most, so each run's memory bound is the one that holds, as
//! systemd does for `fs.file-max` at boot and the kubelet does for the settings it needs (both
//! with a way to leave them: here `--protect-kernel-defaults`).

use std::path::Path;

use crate::command::CommandLimits;

/// One of the kernel's counts, by its sysctl name.
#[derive(Debug, PartialEq, Eq)]
pub struct Count {
    /// Its name, as `sysctl` spells it.
    pub sysctl: &'static str,
    /// What it counts.
    pub counts: &'static str,
    /// The most the kernel takes for it.
    pub most: u64,
}

/// The counts whose objects every run's memory cgroup is charged for (checked here: 796,000
/// open files took 176 MiB of their cgroup's kernel memory, 10,000 inotify instances 9.6 MiB;
/// AIO contexts past a 64 MiB bound, and pseudo-terminals past an 8 MiB one, had their process
/// killed by its cgroup's OOM killer), each with the most the kernel takes: a `long`'s or an
/// `int`'s, as the sysctl is (systemd sets files' so), `NR_UNIX98_PTY_MAX` for terminals.
pub const MEMORY_BOUND: [Count; 6] = [
    Count {
        sysctl: "fs.file-max",
        counts: "open files",
        most: i64::MAX as u64,
    },
    Count {
        sysctl: "fs.aio-max-nr",
        counts: "asynchronous I/O events",
        most: i64::MAX as u64,
    },
    Count {
        sysctl: "kernel.pty.max",
        counts: "pseudo-terminals",
        most: 1 << 20,
    },
    // A uid's, and so shared by every run of one `--job-user` (and by the machine's other
    // processes of that uid): a run took all 128 inotify instances for 128 KiB of its memory,
    // and no other run could watch a file.
    Count {
        sysctl: "fs.inotify.max_user_instances",
        counts: "inotify instances of a user",
        most: i32::MAX as u64,
    },
    Count {
        sysctl: "fs.inotify.max_user_watches",
        counts: "inotify watches of a user",
        most: i32::MAX as u64,
    },
    Count {
        sysctl: "fs.epoll.max_user_watches",
        counts: "epoll watches of a user",
        most: i64::MAX as u64,
    },
];

/// What became of one count.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was lower, and is its most now.
    Lifted { from: u64 },
    /// It was at its most already.
    Already,
    /// It was lower and is kept so (`--protect-kernel-defaults`).
    Kept { at: u64 },
    /// It could not be read or written (not root, or a container's read-only `/proc/sys`).
    Failed { error: String },
}

/// Lifts each of [`MEMORY_BOUND`] below its most to it, in `proc_sys` (the machine's is
/// `/proc/sys`), or, with `protect`, only says which are lower.
pub fn lift(proc_sys: &Path, protect: bool) -> Vec<(&'static Count, Outcome)> {
    MEMORY_BOUND
        .iter()
        .map(|count| (count, lift_one(proc_sys, count, protect)))
        .collect()
}

fn lift_one(proc_sys: &Path, count: &Count, protect: bool) -> Outcome {
    let path = proc_sys.join(count.sysctl.replace('.', "/"));
    let at = match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(at) => at,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("{}: {text:?} is not a count: {e}", path.display()),
                };
            }
        },
        Err(e) => {
            return Outcome::Failed {
                error: format!("{}: {e}", path.display()),
            };
        }
    };
    if at >= count.most {
        return Outcome::Already;
    }
    if protect {
        return Outcome::Kept { at };
    }
    match std::fs::write(&path, count.most.to_string()) {
        Ok(()) => Outcome::Lifted { from: at },
        Err(e) => Outcome::Failed {
            error: format!("{}: {e}", path.display()),
        },
    }
}

/// [`lift`] on this machine (unless [`CommandLimits::protect_kernel_defaults`]) for a daemon
/// or agent about to run commands under `limits` in `cgroups`, where each run is held to a
/// memory bound; says what it did: a count left low is a warning, as one run can then take all
/// of it.
pub fn lift_for_runs(cgroups: Option<&crate::cgroup::Cgroups>, limits: &CommandLimits) {
    let bounded = cgroups.is_some_and(|c| c.limits_available().0);
    if !bounded || limits.max_memory_mib.is_none() || crate::command::runs_as(limits).is_err() {
        return;
    }
    for (count, outcome) in lift(Path::new("/proc/sys"), limits.protect_kernel_defaults) {
        let (sysctl, counts) = (count.sysctl, count.counts);
        let risk = "one command run within its memory bound can take every one, and then no \
                    other process on this machine (other tenants' runs among them) gets one";
        match outcome {
            Outcome::Lifted { from } => tracing::info!(
                sysctl,
                from,
                to = count.most,
                "the machine's count of {counts} is lifted: each run's memory bound holds them"
            ),
            Outcome::Already => {}
            Outcome::Kept { at } => tracing::warn!(
                sysctl,
                at,
                "the machine's count of {counts} is kept (--protect-kernel-defaults): {risk}"
            ),
            Outcome::Failed { error } => tracing::warn!(
                sysctl,
                error,
                "the machine's count of {counts} could not be lifted: {risk}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out as `/proc/sys` holding the counts `values` in [`MEMORY_BOUND`]'s
    /// order.
    fn sysctls(values: [&str; 6]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (count, value) in MEMORY_BOUND.iter().zip(values) {
            let path = dir.path().join(count.sysctl.replace('.', "/"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        dir
    }

    fn read(dir: &tempfile::TempDir) -> Vec<String> {
        (MEMORY_BOUND.iter())
            .map(|c| std::fs::read_to_string(dir.path().join(c.sysctl.replace('.', "/"))).unwrap())
            .collect()
    }

    fn outcomes(dir: &tempfile::TempDir, protect: bool) -> Vec<Outcome> {
        lift(dir.path(), protect).into_iter().map(|o| o.1).collect()
    }

    #[test]
    fn counts_below_the_most_are_lifted_and_a_protected_machine_keeps_them() {
        let defaults = [
            "2466239\n",
            "65536\n",
            "4096\n",
            "128\n",
            "192540\n",
            "4017446\n",
        ];
        let dir = sysctls(defaults);
        let at = |text: &str| text.trim().parse::<u64>().unwrap();
        let kept: Vec<Outcome> = (defaults.iter())
            .map(|d| Outcome::Kept { at: at(d) })
            .collect();
        assert_eq!(outcomes(&dir, true), kept);
        assert_eq!(read(&dir), defaults);

        let lifted: Vec<Outcome> = (defaults.iter())
            .map(|d| Outcome::Lifted { from: at(d) })
            .collect();
        assert_eq!(outcomes(&dir, false), lifted);
        let most: Vec<String> = MEMORY_BOUND.iter().map(|c| c.most.to_string()).collect();
        assert_eq!(read(&dir), most);
        assert_eq!(read(&dir)[2], "1048576");
        assert_eq!(read(&dir)[3], "2147483647");
        assert_eq!(outcomes(&dir, false), [const { Outcome::Already }; 6]);
    }

    #[test]
    fn a_count_that_cannot_be_read_is_a_failure_naming_its_file() {
        let dir = sysctls(["lots\n", "65536\n", "4096\n", "128\n", "8192\n", "8192\n"]);
        std::fs::remove_file(dir.path().join("fs/aio-max-nr")).unwrap();
        let outcomes = outcomes(&dir, false);
        match &outcomes[0] {
            Outcome::Failed { error } => {
                assert!(
                    error.contains("fs/file-max") && error.contains("lots"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        match &outcomes[1] {
            Outcome::Failed { error } => assert!(error.contains("fs/aio-max-nr"), "{error}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(outcomes[2], Outcome::Lifted { from: 4096 });
    }
}
