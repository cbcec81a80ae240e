//! One training job, composed in one place for every caller: `gantry train` (checkpoints as
//! files), a daemon's runner (checkpoints in the encrypted store, stopped by a cancel) and an
//! embedder. A [`Job`] holds a checked configuration, its data and the backend it runs on; the
//! caller steers the run through [`Hooks`].

use super::TrainError;
use super::checkpoint::Checkpoint;
use super::config::TrainConfig;
use super::data::{self, Loaded};
use super::device::{self, DeviceReport, Selected};
use super::limits::TrainLimits;
use super::run::{self, Hooks, Outcome};

/// A training job ready to run: its configuration, its data, the devices found and the backend
/// chosen among them, and the checkpoint it continues from, if any.
#[derive(Debug)]
pub struct Job {
    config: TrainConfig,
    data: Loaded,
    devices: DeviceReport,
    selected: Selected,
    resume: Option<Checkpoint>,
}

impl Job {
    /// A job training `config` on `data` (read by the caller: a daemon's stored dataset, say),
    /// on the backend `config` asks for among this machine's devices.
    pub fn new(config: TrainConfig, data: Loaded) -> Result<Self, TrainError> {
        let devices = device::detect();
        let selected = device::select(&devices, &config.devices)?;
        Ok(Self {
            config,
            data,
            devices,
            selected,
            resume: None,
        })
    }

    /// A job training `config` on `data` on the GPUs it was placed on, and no others: one
    /// data-parallel replica each (see [`device::select_placed`]), the configuration checked
    /// against `limits` again with that many replicas.
    pub fn placed(
        mut config: TrainConfig,
        data: Loaded,
        placed: &device::Placed,
        limits: &TrainLimits,
    ) -> Result<Self, TrainError> {
        config.devices.replicas = placed.ordinals.len().max(1);
        config.check_limits(limits, std::path::Path::new("the placed job"), None)?;
        let devices = device::detect();
        let selected = device::select_placed(&devices, &config.devices, placed)?;
        Ok(Self {
            config,
            data,
            devices,
            selected,
            resume: None,
        })
    }

    /// A job training `config` on the data it names (a file or a synthetic set), every size
    /// bounded by `limits` before it is allocated.
    pub fn load(config: TrainConfig, limits: &TrainLimits) -> Result<Self, TrainError> {
        let data = data::load(&config, limits)?;
        Self::new(config, data)
    }

    /// Continues from `checkpoint` (none: from the start). A checkpoint of another run
    /// (network, seed, batch size, optimizer) is refused when the job runs.
    pub fn resume_from(mut self, checkpoint: Option<Checkpoint>) -> Self {
        self.resume = checkpoint;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The data, split into training and held-out rows.
    pub fn data(&self) -> &Loaded {
        &self.data
    }

    /// The devices found on this machine.
    pub fn devices(&self) -> &DeviceReport {
        &self.devices
    }

    /// The backend the job runs on, and why.
    pub fn selected(&self) -> &Selected {
        &self.selected
    }

    /// The step the job resumes after, if it resumes.
    pub fn resumes_at(&self) -> Option<u32> {
        self.resume.as_ref().map(|c| c.state.step)
    }

    /// Trains to the end (or until `hooks` stop it), then scores the held-out rows and
    /// `[data] test_file`.
    pub fn run(self, hooks: Hooks<'_>) -> Result<Outcome, TrainError> {
        run::train(&self.config, &self.data, &self.selected, self.resume, hooks)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::training::CheckpointSink;
    use crate::training::checkpoint;

    /// Checkpoints kept in memory: a sink of the caller's, as a daemon's store is.
    #[derive(Default)]
    struct Kept(Vec<Checkpoint>);

    impl CheckpointSink for Kept {
        fn save(&mut self, checkpoint: &Checkpoint) -> Result<String, TrainError> {
            self.0.push(checkpoint.clone());
            Ok(format!("kept #{}", self.0.len()))
        }

        fn latest(&mut self) -> Result<Option<(String, Checkpoint)>, TrainError> {
            Ok(self
                .0
                .last()
                .map(|c| (format!("kept #{}", self.0.len()), c.clone())))
        }
    }

    // One thread, one replica: a resumed run is bit for bit the uninterrupted one.
    const CONFIG: &str = r#"
seed = 5
epochs = 3
batch_size = 32
data.synthetic = { kind = "spirals", classes = 3, rows_per_class = 40 }
model = { hidden = [8], loss = "softmax_cross_entropy" }
optimizer = { kind = "adam", lr = 0.01 }
devices = { backend = "cpu", threads = 1 }
checkpoint = { dir = "never-written", every_steps = 4 }
"#;

    fn job() -> Job {
        let config = TrainConfig::parse(CONFIG, "t.toml".as_ref()).unwrap();
        Job::load(config, &TrainLimits::default()).unwrap()
    }

    /// Found by a review: a run's steps were bounded in number, not in time, so a tenant's
    /// runs of slow steps held their memory for days. A run past its time limit ends after the
    /// step going on, with an error saying so (its job fails).
    #[test]
    fn a_run_past_its_time_limit_ends() {
        let long = CONFIG.replace("epochs = 3", "epochs = 1000000");
        let config = TrainConfig::parse(&long, "t.toml".as_ref()).unwrap();
        let job = Job::load(config, &TrainLimits::default()).unwrap();
        let mut kept = Kept::default();
        let e = job
            .run(Hooks::new().time_limit_s(1).checkpoints(&mut kept))
            .unwrap_err();
        let TrainError::RanTooLong { step, limit_s } = &e else {
            panic!("{e}")
        };
        assert_eq!(*limit_s, 1);
        assert!(*step > 0 && !kept.0.is_empty(), "{step}");
        assert!(e.to_string().contains("max_run_time_s"), "{e}");
    }

    #[test]
    fn hooks_see_progress_stop_between_steps_and_a_resumed_job_ends_where_an_uninterrupted_one_does()
     {
        // 96 training rows in batches of 32: 3 steps an epoch, 9 in all.
        let mut straight = Kept::default();
        let mut seen = Vec::new();
        let mut progress = |p: &crate::training::Progress| seen.push((p.epoch, p.step));
        let full = job()
            .run(
                Hooks::new()
                    .progress(&mut progress)
                    .checkpoints(&mut straight),
            )
            .unwrap();
        assert_eq!(full.steps, 9);
        let epochs_and_steps: Vec<(u64, u32)> = (0..9).map(|s| (s / 3, s as u32 + 1)).collect();
        assert_eq!(seen, epochs_and_steps);
        // Every 4 steps and at the end, all into the sink, none into the config's directory.
        let steps: Vec<u32> = straight.0.iter().map(|c| c.state.step).collect();
        assert_eq!(steps, [4, 8, 9]);
        assert_eq!(full.checkpoint.as_deref(), Some("kept #3"));
        assert!(!std::path::Path::new("never-written").exists());

        // Stopped after step 6: no step after it runs, and the step-4 checkpoint is the newest.
        let mut stopped = Kept::default();
        let last = Cell::new(0);
        let mut progress = |p: &crate::training::Progress| last.set(p.step);
        let stop = || last.get() == 6;
        let e = job()
            .run(
                Hooks::new()
                    .progress(&mut progress)
                    .stop(&stop)
                    .checkpoints(&mut stopped),
            )
            .unwrap_err();
        assert!(matches!(e, TrainError::Stopped { step: 6 }), "{e}");
        assert_eq!(last.get(), 6);
        let (_, newest) = stopped.latest().unwrap().unwrap();
        assert_eq!(newest.state.step, 4);

        // Resumed from it: the same parameters, curve and scores as the uninterrupted run.
        let resumed = job()
            .resume_from(Some(newest))
            .run(Hooks::new().checkpoints(&mut stopped))
            .unwrap();
        assert_eq!(resumed.resumed_at_step, Some(4));
        assert_eq!(
            (resumed.steps, &resumed.curve, resumed.test),
            (full.steps, &full.curve, full.test)
        );
        let end = |k: &Kept| checkpoint::to_bytes(k.0.last().unwrap());
        assert!(
            end(&stopped) == end(&straight),
            "the final checkpoints differ"
        );
    }

    /// Found by a hostile config: a run whose loss turned NaN (`lr = 1e30`) trained on to its
    /// last epoch, wrote NaN checkpoints over good ones and reported success. It now fails at
    /// the first step whose loss is not finite, and keeps nothing from that step on.
    #[test]
    fn a_run_whose_loss_turns_nan_fails_at_that_step_and_keeps_nothing_from_it() {
        let text = CONFIG
            .replace("lr = 0.01", "lr = 1e30")
            .replace("every_steps = 4", "every_steps = 1");
        let config = TrainConfig::parse(&text, "t.toml".as_ref()).unwrap();
        let mut kept = Kept::default();
        let e = Job::load(config, &TrainLimits::default())
            .unwrap()
            .run(Hooks::new().checkpoints(&mut kept))
            .unwrap_err();
        // Step 1 moves every parameter by about lr (finite); step 2's loss is NaN.
        assert!(
            matches!(
                e,
                TrainError::Diverged {
                    step: 2,
                    epoch: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = e.to_string();
        assert!(
            e.contains("loss was NaN") && e.contains("kept #1") && e.contains("1e30"),
            "{e}"
        );
        let steps: Vec<u32> = kept.0.iter().map(|c| c.state.step).collect();
        assert_eq!(steps, [1]);
        assert!(kept.0[0].state.check().is_ok());
    }

    /// Found with inputs of scale 1e37: their squared gradients overflowed Adam's second
    /// moments to infinity, the updates then stopped, the loss stayed finite, and the run
    /// reported success. Its state is checked before it is kept or reported.
    #[test]
    fn a_run_whose_state_overflows_while_its_loss_stays_finite_fails_too() {
        let dir = tempfile::tempdir().unwrap();
        let rows: String = (0..96)
            .map(|i| format!("{}e37,{},{}\n", 1 + i % 3, i % 5, i % 3))
            .collect();
        std::fs::write(dir.path().join("d.csv"), format!("x,y,class\n{rows}")).unwrap();
        let text = CONFIG
            .replace(
                "data.synthetic = { kind = \"spirals\", classes = 3, rows_per_class = 40 }",
                &format!(
                    "data = {{ file = \"{}\", label = \"class\" }}",
                    dir.path().join("d.csv").display()
                ),
            )
            .replace("every_steps = 4", "every_steps = 100");
        let config = TrainConfig::parse(&text, &dir.path().join("t.toml")).unwrap();
        let mut kept = Kept::default();
        let e = Job::load(config, &TrainLimits::default())
            .unwrap()
            .run(Hooks::new().checkpoints(&mut kept))
            .unwrap_err();
        assert!(matches!(e, TrainError::Diverged { .. }), "{e}");
        assert!(e.to_string().contains("is inf"), "{e}");
        assert!(kept.0.is_empty());
    }
}
