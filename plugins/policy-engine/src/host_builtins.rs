//! The builtins a sandbox cannot compute, because they read the clock or draw random numbers:
//! `time.now_ns`, `rand.intn` and `uuid.rfc4122`. The host provides the clock and the draws
//! (OPA's Wasm ABI: the module names them in `builtins()` and calls `opa_builtin*`), so what a
//! decision saw is the host's to record in its audit entry. Everything else about them (their
//! arguments, their errors, building a uuid) is here, the same in the module and natively.
//!
//! As in OPA, each is one value per query: `time.now_ns()` is the query's time, `rand.intn(k, n)`
//! one draw per `(k, |n|)`, `uuid.rfc4122(k)` one uuid per `k`. The host keeps those per
//! evaluation (in the module: a fresh cache for each `opa_eval`).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;

use regorus::{Engine, Value};

/// The host's clock: the evaluation's time, in nanoseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> Result<i64, String> + Send + Sync>;

/// The host's draws: `(key, n)` -> a uniform draw from `0..n` (`n > 0`).
pub type Draw = Arc<dyn Fn(&str, i64) -> Result<i64, String> + Send + Sync>;

/// Where the host builtins get the clock and entropy.
#[derive(Clone)]
pub struct Host {
    /// One value per evaluation.
    pub now_ns: Clock,
    /// One value per `(key, n)` per evaluation.
    pub intn: Draw,
}

/// The most distinct draws (keys and bounds) one evaluation may ask the host for, and the longest
/// key: the host keeps every draw of an evaluation, outside the sandbox's memory cap, and records
/// them in the decision's audit entry, so a policy must not make either grow without bound.
pub const MAX_DRAWS: usize = 1024;
/// See [`MAX_DRAWS`].
pub const MAX_KEY_BYTES: usize = 1024;

/// `host.intn(key, n)`, refusing a key over [`MAX_KEY_BYTES`].
fn draw(host: &Host, key: &str, n: i64) -> anyhow::Result<i64> {
    if key.len() > MAX_KEY_BYTES {
        return Err(anyhow::Error::msg(format!(
            "rand.intn: a key of {} bytes, over the {MAX_KEY_BYTES} a decision may use",
            key.len()
        )));
    }
    (host.intn)(key, n).map_err(anyhow::Error::msg)
}

/// A uuid needs 122 random bits: two draws of 61.
const UUID_DRAW: i64 = 1 << 61;

/// Registers the host builtins on `engine`; they take precedence over regorus's own (which would
/// draw from an entropy source the module does not have). With `strict` off, a bad argument makes
/// the call undefined, as any builtin error is then; a failing host is always an error.
pub fn register(engine: &mut Engine, host: &Host, strict: bool) -> Result<(), String> {
    let bad = move |message: String| -> anyhow::Result<Value> {
        if strict {
            Err(anyhow::Error::msg(message))
        } else {
            Ok(Value::Undefined)
        }
    };
    let h = host.clone();
    let now_ns = move |_: alloc::vec::Vec<Value>| -> anyhow::Result<Value> {
        Ok(Value::from((h.now_ns)().map_err(anyhow::Error::msg)?))
    };
    let h = host.clone();
    let intn = move |args: alloc::vec::Vec<Value>| -> anyhow::Result<Value> {
        let Ok(key) = args[0].as_string() else {
            return bad("rand.intn: operand 1 must be string".into());
        };
        let n = match args[1].as_number() {
            Ok(n) if n.is_integer() => n.as_i64(),
            _ => None,
        };
        let Some(n) = n else {
            return bad("rand.intn: operand 2 must be an integer number".into());
        };
        // OPA: 0 gives 0 without a draw, and a negative bound counts as its magnitude.
        if n == 0 {
            return Ok(Value::from(0i64));
        }
        let n = n.checked_abs().unwrap_or(i64::MAX);
        Ok(Value::from(draw(&h, key, n)?))
    };
    let h = host.clone();
    let uuid = move |args: alloc::vec::Vec<Value>| -> anyhow::Result<Value> {
        let Ok(k) = args[0].as_string() else {
            return bad("uuid.rfc4122: operand 1 must be string".into());
        };
        let draw = |i: u8| {
            draw(&h, &format!("uuid.rfc4122({k})/{i}"), UUID_DRAW)
                .map(|v| (v as u128) & (UUID_DRAW as u128 - 1))
        };
        let bits = (draw(0)? << 61) | draw(1)?;
        Ok(Value::from(uuid_v4(bits)))
    };
    let add =
        |engine: &mut Engine, name: &str, n: u8, f: alloc::boxed::Box<dyn regorus::Extension>| {
            engine
                .add_extension(name.into(), n, f)
                .map_err(|e| format!("{name}: {e}"))
        };
    add(engine, "time.now_ns", 0, alloc::boxed::Box::new(now_ns))?;
    add(engine, "rand.intn", 2, alloc::boxed::Box::new(intn))?;
    add(engine, "uuid.rfc4122", 1, alloc::boxed::Box::new(uuid))
}

/// An RFC 4122 version 4 uuid from 122 random bits (the low 122 of `bits`).
pub(crate) fn uuid_v4(bits: u128) -> String {
    let top = (bits >> 74) & ((1 << 48) - 1);
    let mid = (bits >> 62) & 0xfff;
    let low = bits & ((1 << 62) - 1);
    let u = (top << 80) | (0x4 << 76) | (mid << 64) | (0b10 << 62) | low;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        u >> 96,
        (u >> 80) & 0xffff,
        (u >> 64) & 0xffff,
        (u >> 48) & 0xffff,
        u & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_has_version_4_and_the_rfc_variant_and_keeps_every_bit() {
        let zero = uuid_v4(0);
        assert_eq!(zero, "00000000-0000-4000-8000-000000000000");
        let ones = uuid_v4((1 << 122) - 1);
        assert_eq!(ones, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        // Each of the 122 bits lands somewhere distinct.
        let mut seen = alloc::collections::BTreeSet::new();
        for bit in 0..122 {
            assert!(seen.insert(uuid_v4(1 << bit)), "bit {bit} collides");
        }
        assert!(!seen.contains(&zero));
    }
}
