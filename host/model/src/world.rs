//! The WIT worlds plugins implement, by the names manifests give (`world = "..."`) and the
//! host checks. The `.wit` files under `wit/` are the source; a test reads them so these names
//! cannot drift from the package versions written there.

/// `gantry:scheduler/scheduler`: scheduling strategies (`wit/scheduler`).
pub const SCHEDULER: &str = "gantry:scheduler/scheduler@0.1.0";

/// `gantry:preprocess/preprocess`: preprocessing transforms (`wit/preprocess`).
pub const PREPROCESS: &str = "gantry:preprocess/preprocess@0.1.0";

#[cfg(test)]
mod tests {
    /// Every world a `.wit` text declares, as `namespace:package/world@version`.
    fn worlds(wit: &str) -> Vec<String> {
        let package = wit
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .and_then(|p| p.trim().strip_suffix(';'))
            .expect("a `package` line");
        let (name, version) = package.split_once('@').expect("a versioned package");
        wit.lines()
            .filter_map(|l| l.trim().strip_prefix("world "))
            .map(|w| {
                let world = w.trim_end_matches('{').trim();
                format!("{name}/{world}@{version}")
            })
            .collect()
    }

    #[test]
    fn world_names_match_the_wit_files() {
        let scheduler = include_str!("../../../wit/scheduler/strategy.wit");
        let preprocess = include_str!("../../../wit/preprocess/transform.wit");
        assert_eq!(worlds(scheduler), [super::SCHEDULER]);
        assert_eq!(worlds(preprocess), [super::PREPROCESS]);
    }
}
