//! `onehot`: categorical CSV columns to one-hot vectors, numeric columns passed through, one
//! pass. Config: `delimiter`, `categories` (`column=a|b|c;...`), `unknown` (`error` | `zero`).

pub mod encode;

use std::cell::RefCell;

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::transform::{ConfigEntry, PluginError, Records, Tensor, Transform};

thread_local! {
    static STATE: RefCell<(u8, encode::Schema)> = RefCell::new((b',', encode::Schema::default()));
}

/// The plugin.
pub struct OneHot;

impl Transform for OneHot {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        let config = Config::new(config);
        config.reject_unknown(&["delimiter", "categories", "unknown"])?;
        let delimiter: String = config.parse_or("delimiter", ",".to_string())?;
        let [delimiter] = delimiter.as_bytes() else {
            return Err(PluginError::InvalidConfig(format!(
                "config key `delimiter`: one ASCII character, not `{delimiter}`"
            )));
        };
        let schema = encode::Schema::parse(
            config.get("categories").unwrap_or(""),
            config.get("unknown").unwrap_or("error"),
        )
        .map_err(|m| PluginError::InvalidConfig(format!("config key `categories`: {m}")))?;
        STATE.with_borrow_mut(|s| *s = (*delimiter, schema));
        Ok(())
    }

    fn process(batch: Records<'_>) -> Result<Tensor, PluginError> {
        let (data, offsets) = batch.raw();
        STATE.with_borrow(|(delimiter, schema)| {
            let mut out = Vec::new();
            let (rows, width) = encode::encode(data, offsets, *delimiter, schema, &mut out)
                .map_err(PluginError::InvalidInput)?;
            Ok(Tensor {
                shape: vec![rows as u32, width as u32],
                data: out,
            })
        })
    }
}

gantry_plugin_sdk::export_transform!(OneHot);
