use super::cycle::tests::job;
use crate::cluster::Cluster;
use crate::policy::Subject;
use crate::{Host, HostConfig, HostError};

/// A job is checked once on its way in: a checked job is queued as it is, and checked again
/// only when the host's state changed in between (here: every GPU lost).
#[test]
fn a_checked_job_is_checked_again_only_when_the_state_changed_since() {
    let mut host = Host::new(HostConfig::new(Cluster::uniform(1, 2, 8, 1))).unwrap();
    let e = host.check(job("", 1)).unwrap_err();
    assert!(matches!(e, HostError::Job { ref message, .. } if message.starts_with("id:")));
    let subject = Subject::new("ada", ["researcher"]).in_tenants(["tenant-0"]);
    let submit =
        |host: &mut Host, job| crate::blocking::block_on(host.submit_checked_as(&subject, job));
    let fits = host.check(job("a", 2)).unwrap();
    assert_eq!(fits.spec().id, "a");
    submit(&mut host, fits).unwrap();
    let late = host.check(job("b", 2)).unwrap();
    let gpus: Vec<String> = (host.state().cluster.gpus.iter())
        .map(|g| g.id.clone())
        .collect();
    for gpu in &gpus {
        host.set_gpu_health(gpu, false).unwrap();
    }
    let e = submit(&mut host, late).unwrap_err();
    assert!(
        matches!(e, HostError::Job { ref message, .. } if message.starts_with("memory_per_gpu_mib:")),
        "{e}"
    );
    let queued: Vec<&str> = (host.state().pending.iter())
        .map(|p| p.spec.id.as_str())
        .collect();
    assert_eq!(queued, ["a"]);
}
