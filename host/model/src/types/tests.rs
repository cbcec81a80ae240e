use super::*;

/// The `(code, name)` pairs the WIT's doc of `jobs.topology` lists, written there as
/// ``0 `none` ``.
fn documented_codes(wit: &str) -> Vec<(u8, String)> {
    let lines: Vec<&str> = wit.lines().map(str::trim).collect();
    let field = lines
        .iter()
        .position(|l| *l == "topology: list<u8>,")
        .expect("jobs.topology in types.wit");
    let doc_start = lines[..field]
        .iter()
        .rposition(|l| !l.starts_with("///"))
        .map_or(0, |i| i + 1);
    let doc: String = lines[doc_start..field]
        .iter()
        .map(|l| l.trim_start_matches('/').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let parts: Vec<&str> = doc.split('`').collect();
    parts
        .chunks(2)
        .filter_map(|pair| {
            let code = pair[0].split_whitespace().last()?.parse().ok()?;
            Some((code, pair.get(1)?.to_string()))
        })
        .collect()
}

#[test]
fn topology_codes_and_names_are_the_ones_the_wit_documents() {
    let wit = include_str!("../../../../wit/scheduler/types.wit");
    let ours: Vec<(u8, String)> = Topology::ALL
        .iter()
        .map(|t| (t.code(), t.name().to_string()))
        .collect();
    assert_eq!(documented_codes(wit), ours);
}

#[test]
fn topology_names_and_codes_round_trip() {
    for t in Topology::ALL {
        assert_eq!(t.name().parse::<Topology>(), Ok(t));
        assert_eq!(Topology::from_code(t.code()), Some(t));
    }
    assert_eq!("".parse::<Topology>(), Ok(Topology::None));
    assert_eq!(Topology::from_code(4), None);
    let e = "same-planet".parse::<Topology>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown topology `same-planet` (none, same-node, same-nvlink-domain, same-rack)"
    );
}
