//! OPA's network builtins that regorus lacks (a policy calling one was refused at build):
//! `net.cidr_intersects`, `net.cidr_contains_matches` and `net.cidr_merge`, with the meaning
//! OPA's Go gives them (Go's `net.ParseCIDR`/`ParseIP`: an IPv4-mapped IPv6 network is the
//! IPv4 one; `cidr_merge`'s ranges merged in one 128-bit space, IPv4 as `::ffff:0:0/96`).

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regorus::Value;

use crate::go_builtins::{Fail, GoError, cidr_contains, network};

/// The most items `net.cidr_contains_matches` and `net.cidr_merge` take from an operand (and
/// pairs the former tries): each is a parse, and a policy's input is not a place for millions.
/// A bound of this engine's (OPA has none), so past it the evaluation fails whatever the
/// builtin-error mode: as undefined, `allow if not deny` allowed where OPA's `deny` matched.
const MAX_ITEMS: usize = 100_000;

/// `net.cidr_intersects(cidr1, cidr2)`: whether either network holds the other's first address.
pub fn intersects(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let (Ok(a), Ok(b)) = (args[0].as_string(), args[1].as_string()) else {
            return fail("net.cidr_intersects: operands must be strings".into());
        };
        match (cidr(a), cidr(b)) {
            (Ok(a), Ok(b)) => Ok(Value::from(a.holds(&b.first()) || b.holds(&a.first()))),
            (Err(e), _) | (_, Err(e)) => fail(format!("net.cidr_intersects: {e}")),
        }
    })
}

/// `net.cidr_contains_matches(cidrs, cidrs_or_ips)`: the pairs of keys `[k1, k2]` whose CIDR
/// (the string, or an array's first item) of the first operand contains the second's. A string
/// is its own key; an array's keys are indexes, a set's its items, an object's its keys.
pub fn contains_matches(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let (first, second) = match (keyed(&args[0], 1), keyed(&args[1], 2)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return e.context("net.cidr_contains_matches").answer(fail);
            }
        };
        if first.len().saturating_mul(second.len()) > MAX_ITEMS {
            return GoError::Hard(format!(
                "net.cidr_contains_matches: more than {MAX_ITEMS} pairs to try, more than \
                 Gantry holds"
            ))
            .answer(fail);
        }
        let mut pairs = BTreeSet::new();
        for (k1, c1) in &first {
            for (k2, c2) in &second {
                let (Ok(c1), Ok(c2)) = (c1.as_string(), c2.as_string()) else {
                    return fail("net.cidr_contains_matches: operands must be strings".into());
                };
                match cidr_contains(c1, c2) {
                    Ok(true) => {
                        pairs.insert(Value::from(alloc::vec![k1.clone(), k2.clone()]));
                    }
                    Ok(false) => {}
                    Err(e) => return fail(format!("net.cidr_contains_matches: {e}")),
                }
            }
        }
        Ok(Value::from(pairs))
    })
}

/// An operand of `net.cidr_contains_matches` as (key, CIDR) pairs.
fn keyed(operand: &Value, n: usize) -> Result<Vec<(Value, Value)>, GoError> {
    let item = |v: &Value| match v {
        Value::String(_) => Ok(v.clone()),
        Value::Array(items) if !items.is_empty() => Ok(items[0].clone()),
        _ => Err(GoError::Builtin(format!(
            "operand {n}: element must be string or non-empty array"
        ))),
    };
    let bounded = |len: usize| match len > MAX_ITEMS {
        true => Err(GoError::Hard(format!(
            "operand {n}: more than {MAX_ITEMS} items, more than Gantry holds"
        ))),
        false => Ok(()),
    };
    Ok(match operand {
        Value::String(_) => alloc::vec![(operand.clone(), operand.clone())],
        Value::Array(items) => {
            bounded(items.len())?;
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                out.push((Value::from(i as u64), item(v)?));
            }
            out
        }
        Value::Set(items) => {
            bounded(items.len())?;
            let mut out = Vec::with_capacity(items.len());
            for v in items.iter() {
                out.push((v.clone(), item(v)?));
            }
            out
        }
        Value::Object(fields) => {
            bounded(fields.len())?;
            let mut out = Vec::with_capacity(fields.len());
            for (k, v) in fields.iter() {
                out.push((k.clone(), item(v)?));
            }
            out
        }
        // OPA iterates nothing of another type.
        _ => Vec::new(),
    })
}

/// `net.cidr_merge(addrs)`: the fewest networks covering the addresses and networks given (an
/// array or set of strings; an IPv4 address alone is its class's network, as Go's
/// `DefaultMask` gives it: `10.1.2.3` is `10.1.2.3/8`, written so while nothing merges with it;
/// an IPv6 one needs its prefix length).
pub fn merge(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let items: Vec<&Value> = match &args[0] {
            Value::Array(items) if items.len() <= MAX_ITEMS => items.iter().collect(),
            Value::Set(items) if items.len() <= MAX_ITEMS => items.iter().collect(),
            Value::Array(_) | Value::Set(_) => {
                return GoError::Hard(format!(
                    "net.cidr_merge: more than {MAX_ITEMS} items, more than Gantry holds"
                ))
                .answer(fail);
            }
            _ => return fail("net.cidr_merge: operand must be an array".into()),
        };
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let Ok(s) = item.as_string() else {
                return fail("net.cidr_merge: element must be string".into());
            };
            match merge_range(s) {
                Ok(r) => ranges.push(r),
                Err(e) => return fail(format!("net.cidr_merge: {e}")),
            }
        }
        Ok(Value::from(
            merged(ranges)
                .into_iter()
                .map(|s| Value::from(s.as_str()))
                .collect::<BTreeSet<Value>>(),
        ))
    })
}

/// A network: its address (IPv4 in the low bits, `v4`) and prefix length in its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    bits: u128,
    prefix: u32,
    v4: bool,
}

impl Net {
    fn width(&self) -> u32 {
        if self.v4 { 32 } else { 128 }
    }

    /// Its first address (the address with the host bits cleared).
    fn first(&self) -> Net {
        let host = self.width() - self.prefix;
        let mask = if host >= 128 { 0 } else { !0u128 << host };
        Net {
            bits: self.bits & mask,
            prefix: self.width(),
            v4: self.v4,
        }
    }

    /// Whether the network holds `ip` (an address of its family).
    fn holds(&self, ip: &Net) -> bool {
        let host = self.width() - self.prefix;
        self.v4 == ip.v4 && (host >= 128 || self.bits >> host == ip.bits >> host)
    }

    /// Its first and last address in the one 128-bit space of `cidr_merge` (IPv4 mapped).
    fn span(&self) -> (u128, u128) {
        let offset = if self.v4 { 0xffff_u128 << 32 } else { 0 };
        let host = self.width() - self.prefix;
        let size = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        let first = self.first().bits;
        (offset | first, offset | (first | size))
    }
}

impl core::fmt::Display for Net {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.v4 {
            true => write!(f, "{}/{}", Ipv4Addr::from(self.bits as u32), self.prefix),
            false => write!(f, "{}/{}", Ipv6Addr::from(self.bits), self.prefix),
        }
    }
}

fn of(ip: IpAddr, prefix: u32) -> Net {
    match ip {
        IpAddr::V4(v4) => Net {
            bits: u128::from(u32::from(v4)),
            prefix,
            v4: true,
        },
        IpAddr::V6(v6) => Net {
            bits: u128::from(v6),
            prefix,
            v4: false,
        },
    }
}

/// A CIDR as Go's `net.ParseCIDR` reads it (its address masked).
fn cidr(s: &str) -> Result<Net, String> {
    let (ip, prefix) = network(s, true)?;
    let net = of(ip, prefix);
    Ok(Net {
        bits: net.first().bits,
        ..net
    })
}

/// One item of `cidr_merge`: its range and, while it is merged with nothing, its text.
struct Range {
    first: u128,
    last: u128,
    text: Option<String>,
}

fn merge_range(s: &str) -> Result<Range, String> {
    let net = match network(s, false) {
        Ok((IpAddr::V4(v4), _)) => {
            // Go's `IP.DefaultMask`: the address's class; none for class D and E.
            let prefix = match v4.octets()[0] {
                0..0x80 => 8,
                0x80..0xc0 => 16,
                0xc0..0xe0 => 24,
                _ => return Err(format!("{s}: an address of no class needs a prefix length")),
            };
            of(IpAddr::V4(v4), prefix)
        }
        Ok((IpAddr::V6(_), _)) => return Err("IPv6 invalid: needs prefix length".to_string()),
        Err(_) => cidr(s)?,
    };
    let (first, last) = net.span();
    // Go writes an address given alone with its host bits: `10.1.2.3/8`.
    Ok(Range {
        first,
        last,
        text: Some(net.to_string()),
    })
}

/// The ranges merged where they overlap or touch; each merged one as the fewest CIDRs covering
/// it, the others as given.
fn merged(mut ranges: Vec<Range>) -> Vec<String> {
    ranges.sort_by_key(|r| (r.first, core::cmp::Reverse(r.last)));
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if r.first <= prev.last.saturating_add(1) => {
                prev.last = prev.last.max(r.last);
                prev.text = None;
            }
            _ => out.push(r),
        }
    }
    let mut texts = Vec::new();
    for r in out {
        match r.text {
            Some(t) => texts.push(t),
            None => cover(r.first, r.last, &mut texts),
        }
    }
    texts
}

/// The fewest CIDRs covering `first..=last` (a range in the 128-bit space), written in IPv4
/// where they lie in `::ffff:0:0/96`.
fn cover(mut first: u128, last: u128, out: &mut Vec<String>) {
    loop {
        // The largest block aligned at `first` (its trailing zeros) that ends by `last` (the
        // largest power of two not above the addresses left).
        let aligned = if first == 0 {
            128
        } else {
            first.trailing_zeros()
        };
        let left = last - first;
        let fits = match left.checked_add(1) {
            Some(n) => 127 - n.leading_zeros(),
            None => 128,
        };
        let host = aligned.min(fits);
        let end = match host {
            128 => u128::MAX,
            h => first + ((1u128 << h) - 1),
        };
        out.push(match first >> 32 == 0xffff && host <= 32 {
            true => format!("{}/{}", Ipv4Addr::from(first as u32), 32 - host),
            false => format!("{}/{}", Ipv6Addr::from(first), 128 - host),
        });
        if end >= last {
            return;
        }
        first = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge_of(items: &[&str]) -> Vec<String> {
        let ranges: Vec<Range> = items.iter().map(|s| merge_range(s).unwrap()).collect();
        let mut out = merged(ranges);
        out.sort();
        out
    }

    #[test]
    fn networks_intersect_when_either_holds_the_others_first_address() {
        let i = |a: &str, b: &str| {
            let (a, b) = (cidr(a).unwrap(), cidr(b).unwrap());
            a.holds(&b.first()) || b.holds(&a.first())
        };
        assert!(i("192.168.0.0/16", "192.168.1.0/24"));
        assert!(i("192.168.1.0/24", "192.168.0.0/16"));
        assert!(!i("192.168.1.0/24", "192.168.2.0/24"));
        assert!(i(
            "fd1e:5bfe:8af3:9ddc::/64",
            "fd1e:5bfe:8af3:9ddc:1111::/72"
        ));
        assert!(!i("10.0.0.0/8", "::/0"));
        // An IPv4-mapped network is the IPv4 one.
        assert!(i("::ffff:10.0.0.0/104", "10.1.0.0/16"));
        assert!(i("0.0.0.0/0", "255.255.255.255/32"));
        assert!(cidr("10.0.0.0").is_err() && cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn merging_covers_the_union_with_the_fewest_networks() {
        assert_eq!(
            merge_of(&["192.0.128.0/24", "192.0.129.0/24"]),
            ["192.0.128.0/23"]
        );
        assert_eq!(
            merge_of(&["192.0.129.0/24", "192.0.130.0/24"]),
            ["192.0.129.0/24", "192.0.130.0/24"]
        );
        // Contained, duplicated, adjacent across a block boundary.
        assert_eq!(merge_of(&["10.0.0.0/8", "10.1.0.0/16"]), ["10.0.0.0/8"]);
        assert_eq!(
            merge_of(&["192.0.2.0/25", "192.0.2.128/26", "192.0.2.192/27"]),
            ["192.0.2.0/25", "192.0.2.128/26", "192.0.2.192/27"]
        );
        assert_eq!(
            merge_of(&["192.0.2.0/25", "192.0.2.128/25", "192.0.3.0/24"]),
            ["192.0.2.0/23"]
        );
        // An address alone is its class's network, written with its host bits until merged.
        assert_eq!(merge_of(&["192.168.1.1"]), ["192.168.1.1/24"]);
        assert_eq!(
            merge_of(&["192.168.1.1", "192.168.0.0/24"]),
            ["192.168.0.0/23"]
        );
        assert!(merge_range("fd00::1").is_err() && merge_range("239.1.1.1").is_err());
        assert_eq!(
            merge_of(&["2001:db8::/33", "2001:db8:8000::/33"]),
            ["2001:db8::/32"]
        );
        assert_eq!(merge_of(&["0.0.0.0/1", "128.0.0.0/1"]), ["0.0.0.0/0"]);
        assert_eq!(merge_of(&["::/1", "8000::/1"]), ["::/0"]);
        // A range that is no single block: the fewest blocks covering it.
        let mut out = Vec::new();
        cover(
            (0xffff << 32) | u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 1))),
            (0xffff << 32) | u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 6))),
            &mut out,
        );
        assert_eq!(
            out,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
    }
}
