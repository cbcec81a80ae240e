//! `standardize`: z-score standardisation of numeric CSV records, in two passes: `observe`
//! sums each column (the host adds the sums over the dataset), `prepare` turns the totals into
//! means and deviations, `process` parses and standardises each batch into a
//! `records x columns` tensor.
//!
//! Config: `delimiter` (one character, default `,`).

pub mod zscore;

use std::cell::RefCell;

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::transform::{ConfigEntry, PluginError, Records, Tensor, Transform};

#[derive(Default)]
struct State {
    delimiter: u8,
    columns: usize,
    stats: zscore::Stats,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State { delimiter: b',', ..State::default() });
}

/// The plugin.
pub struct Standardize;

impl Transform for Standardize {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        let config = Config::new(config);
        config.reject_unknown(&["delimiter"])?;
        let delimiter: String = config.parse_or("delimiter", ",".to_string())?;
        let [delimiter] = delimiter.as_bytes() else {
            return Err(PluginError::InvalidConfig(format!(
                "config key `delimiter`: one ASCII character, not `{delimiter}`"
            )));
        };
        STATE.with_borrow_mut(|s| s.delimiter = *delimiter);
        Ok(())
    }

    fn observe(batch: Records<'_>) -> Result<Vec<f64>, PluginError> {
        let (data, offsets) = batch.raw();
        STATE.with_borrow_mut(|s| {
            zscore::observe(data, offsets, s.delimiter, &mut s.columns)
                .map_err(PluginError::InvalidInput)
        })
    }

    fn prepare(totals: Vec<f64>) -> Result<(), PluginError> {
        let stats = zscore::prepare(&totals).map_err(PluginError::InvalidInput)?;
        STATE.with_borrow_mut(|s| s.stats = stats);
        Ok(())
    }

    fn process(batch: Records<'_>) -> Result<Tensor, PluginError> {
        let (data, offsets) = batch.raw();
        STATE.with_borrow_mut(|s| {
            let mut out = Vec::new();
            let (rows, columns) = zscore::process(data, offsets, s.delimiter, &s.stats, &mut out)
                .map_err(PluginError::InvalidInput)?;
            let tensor = Tensor {
                shape: vec![rows as u32, columns as u32],
                data: out,
            };
            Ok(tensor)
        })
    }
}

gantry_plugin_sdk::export_transform!(Standardize);
