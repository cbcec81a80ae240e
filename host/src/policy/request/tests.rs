use serde_json::json;

use super::*;

/// A daemon user as the policy saw them before requests were typed (`User::subject`).
fn ada() -> (Subject, serde_json::Value) {
    let typed = Subject::new("ada", ["researcher"])
        .in_tenants(["vision"])
        .cleared_for("internal");
    let before = json!({"user": "ada", "roles": ["researcher"], "tenants": ["vision"],
                        "clearance": "internal"});
    (typed, before)
}

/// Each action the host and the daemon ask about, as a typed request and as the `json!` input
/// the call site built before (copied from those sites).
fn cases() -> Vec<(Request, serde_json::Value)> {
    let (ada, ada_json) = ada();
    let asks = |action: Action, resource: Resource, before: serde_json::Value| {
        let input = json!({"subject": ada_json, "action": action.as_str(), "resource": before});
        (Request::new(ada.clone(), action, resource), input)
    };
    let admission = Admission {
        tenant: "vision".into(),
        gpus: 8,
        tenant_used_gpus: 24,
        job: "train-1".into(),
    };
    let admission_json = json!({"tenant": "vision", "gpus": 8, "tenant_used_gpus": 24,
                                "job": "train-1"});
    let job = JobRef {
        tenant: "vision".into(),
        job: "train-1".into(),
    };
    let dataset = DatasetRef {
        name: "scans".into(),
        classification: "confidential".into(),
        tenant: "vision".into(),
    };
    let dataset_json = json!({"name": "scans", "classification": "confidential",
                              "tenant": "vision"});
    let empty = || Resource::Empty {};
    let mut cases = vec![
        asks(
            Action::JobSubmit,
            admission.clone().into(),
            admission_json.clone(),
        ),
        asks(
            Action::JobRead,
            job.clone().into(),
            json!({"tenant": "vision", "job": "train-1"}),
        ),
        asks(
            Action::JobCancel,
            job.into(),
            json!({"tenant": "vision", "job": "train-1"}),
        ),
        asks(Action::JobList, empty(), json!({})),
        asks(
            Action::JobModel,
            ModelRef {
                tenant: "vision".into(),
                job: "train-1".into(),
                classification: "internal".into(),
            }
            .into(),
            json!({"tenant": "vision", "job": "train-1", "classification": "internal"}),
        ),
        asks(
            Action::JobExec,
            CommandRef {
                tenant: "vision".into(),
                job: "sweep-1".into(),
                program: "torchrun".into(),
            }
            .into(),
            json!({"tenant": "vision", "job": "sweep-1", "program": "torchrun"}),
        ),
        asks(
            Action::DatasetRead,
            dataset.clone().into(),
            dataset_json.clone(),
        ),
        asks(Action::DatasetWrite, dataset.into(), dataset_json),
        asks(Action::DatasetList, empty(), json!({})),
        asks(Action::ClusterRead, empty(), json!({})),
        asks(
            Action::GpuHealth,
            Resource::gpu("n0-g1"),
            json!({"gpu": "n0-g1"}),
        ),
        asks(Action::PluginRead, empty(), json!({})),
        asks(
            Action::NodeHeartbeat,
            Resource::node("node-007"),
            json!({"node": "node-007"}),
        ),
        asks(
            Action::NodeRemove,
            Resource::node("node-007"),
            json!({"node": "node-007"}),
        ),
        asks(
            Action::NodeReport,
            Resource::node("node-007"),
            json!({"node": "node-007"}),
        ),
        asks(
            Action::NodeData,
            Resource::NodeJob(NodeJobRef {
                node: "node-007".into(),
                tenant: "vision".into(),
                job: "j1".into(),
                placed: true,
            }),
            json!({"node": "node-007", "tenant": "vision", "job": "j1", "placed": true}),
        ),
        asks(
            Action::PluginUpload,
            PluginRef::before_body("mine").into(),
            json!({"name": "mine", "signed": true, "before_body": true}),
        ),
        asks(
            Action::PluginUpload,
            PluginRef::new("mine", false).into(),
            json!({"name": "mine", "signed": false}),
        ),
        asks(
            Action::PluginLoad,
            PluginRef::new("binpack", true).into(),
            json!({"name": "binpack", "signed": true}),
        ),
        asks(
            Action::PluginUnload,
            PluginRef::named("binpack").into(),
            json!({"name": "binpack"}),
        ),
        asks(Action::PolicyReplace, empty(), json!({})),
        asks(Action::PolicyRead, empty(), json!({})),
        asks(Action::KeyRotate, empty(), json!({})),
        asks(
            Action::UserManage,
            Resource::user("lee"),
            json!({"user": "lee"}),
        ),
        asks(
            Action::AuditRead,
            Resource::audit_log(),
            json!({"log": "audit.log"}),
        ),
    ];
    // The scheduler asks about each placement as itself: no tenants, no clearance.
    cases.push((
        Request::new(Subject::scheduler(), Action::PlacementApply, admission),
        json!({"subject": {"user": "gantry-scheduler", "roles": ["scheduler"]},
               "action": "placement.apply", "resource": admission_json}),
    ));
    cases
}

#[test]
fn every_typed_request_serialises_to_the_input_the_policy_received_before() {
    let cases = cases();
    for (request, before) in &cases {
        assert_eq!(&request.input(), before, "{}", request.action);
        assert_eq!(
            &serde_json::to_value(request).unwrap(),
            before,
            "{}",
            request.action
        );
    }
    let asked: std::collections::BTreeSet<Action> = cases.iter().map(|(r, _)| r.action).collect();
    assert_eq!(asked.len(), Action::ALL.len(), "an action has no case");
}

#[test]
fn the_actions_are_exactly_those_the_shipped_policy_knows() {
    let (name, rego, data) = crate::builtin::AUTHZ_POLICY;
    let source = crate::policy::source::PolicySource::from_parts(&[(name, rego)], data).unwrap();
    let mut engine = source.engine(false).unwrap();
    let known = engine
        .eval_rule("data.gantry.authz.actions".to_string())
        .unwrap();
    let known: std::collections::BTreeSet<String> =
        serde_json::from_str::<Vec<String>>(&known.to_json_str().unwrap())
            .unwrap()
            .into_iter()
            .collect();
    let ours: std::collections::BTreeSet<String> =
        Action::ALL.iter().map(|a| a.as_str().to_string()).collect();
    assert_eq!(ours, known);
    for action in Action::ALL {
        assert_eq!(
            serde_json::to_value(action).unwrap(),
            json!(action.as_str()),
            "{action:?} serialises to another string than its name"
        );
    }
}
