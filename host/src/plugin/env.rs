//! What a plugin can learn of the world: a clock and randomness the host chooses for each call.
//!
//! A scheduler's decision must be reproducible: the same cluster, queue and time give the same
//! placements, in production and in simulation alike. So a plugin never reads the host's clocks
//! or its entropy: its wall clock reads the time the host hands the call (a scheduler cycle's
//! `now_s`, simulated time in `gantry simulate`), its monotonic clock stands still for the whole
//! call at that same instant, and `wasi:random` (secure and insecure alike) is a generator seeded
//! by the host from the plugin, the time and the input. The randomness is therefore not secret:
//! plugins must not use it for keys or tokens (they have nothing to keep secret).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

#[derive(Debug, Default)]
struct State {
    now: Duration,
    rng: u64,
}

/// The time and random seed of a plugin's calls, shared by its store's clocks and generators
/// and set by the host before each call.
#[derive(Debug, Clone, Default)]
pub struct CallEnv {
    state: Arc<Mutex<State>>,
}

impl CallEnv {
    /// The next call sees `now_s` (seconds since the Unix epoch, or since the start of a
    /// simulation) and draws from a generator seeded with `seed`.
    pub fn set(&self, now_s: f64, seed: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.now = Duration::try_from_secs_f64(now_s.max(0.0)).unwrap_or(Duration::ZERO);
        s.rng = seed;
    }

    fn now(&self) -> Duration {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).now
    }

    fn next(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        splitmix64(&mut s.rng)
    }

    /// The wall clock a store of this plugin reads.
    pub fn wall_clock(&self) -> impl HostWallClock + 'static {
        Clock(self.clone())
    }

    /// The monotonic clock a store of this plugin reads.
    pub fn monotonic_clock(&self) -> impl HostMonotonicClock + 'static {
        Clock(self.clone())
    }

    /// The random source a store of this plugin draws from.
    pub fn random(&self) -> Random {
        Random(self.clone())
    }
}

/// SplitMix64: small, fast, and fully determined by its seed.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable seed from bytes (FNV-1a), for names and inputs: the same in every process.
pub fn seed_of(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `wasi:random/insecure-seed` of a plugin: fixed by its name.
pub fn name_seed(plugin: &str) -> u128 {
    let a = seed_of(&[plugin.as_bytes(), b"insecure-seed"]);
    let b = seed_of(&[plugin.as_bytes(), b"insecure-seed-2"]);
    (u128::from(a) << 64) | u128::from(b)
}

struct Clock(CallEnv);

impl HostWallClock for Clock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        self.0.now()
    }
}

impl HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.now().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The generator behind a store's `wasi:random`.
pub struct Random(CallEnv);

impl rand_core::TryRng for Random {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next() as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let word = self.0.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng as _;

    #[test]
    fn the_same_seed_gives_the_same_draws_and_time() {
        let (a, b) = (CallEnv::default(), CallEnv::default());
        a.set(1234.5, 7);
        b.set(1234.5, 7);
        let draws = |env: &CallEnv| {
            let mut r = env.random();
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draws(&a), draws(&b));
        assert_eq!(a.wall_clock().now(), Duration::from_secs_f64(1234.5));
        b.set(1234.5, 8);
        assert_ne!(draws(&a), draws(&b));
        assert_ne!(seed_of(&[b"ab", b"c"]), seed_of(&[b"a", b"bc"]));
    }
}
