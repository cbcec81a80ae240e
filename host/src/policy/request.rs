//! The host's access-control questions, typed: who ([`Subject`]) wants to do what ([`Action`]) to
//! which [`Resource`]. A [`Request`] serialises to exactly the input `policies/authz.rego`
//! reads (`{"subject", "action", "resource"}`), so a policy sees the same JSON whichever part of
//! the host asks, and the shapes the Rego matches on are written once, here.

use serde::Serialize;

/// Who asks: a user (their roles, and for people, their tenants and dataset clearance) or a
/// part of the host acting on its own (the scheduler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// The user's name (`input.subject.user`).
    pub user: String,
    /// Their roles (`researcher`, `admin`, ...).
    pub roles: Vec<String>,
    /// The tenants they belong to; absent for a subject that belongs to none by nature (the
    /// scheduler), which the policy treats as no tenants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// The highest dataset classification they may read; absent when none was given (the
    /// policy then denies every dataset access).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clearance: Option<String>,
}

impl Subject {
    /// A subject with `roles`, no tenants and no clearance.
    pub fn new(
        user: impl Into<String>,
        roles: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            user: user.into(),
            roles: roles.into_iter().map(Into::into).collect(),
            tenants: None,
            clearance: None,
        }
    }

    /// This subject, a member of `tenants`.
    pub fn in_tenants(mut self, tenants: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tenants = Some(tenants.into_iter().map(Into::into).collect());
        self
    }

    /// This subject, cleared for datasets up to `clearance`.
    pub fn cleared_for(mut self, clearance: impl Into<String>) -> Self {
        self.clearance = Some(clearance.into());
        self
    }

    /// The host's scheduler, asking before it applies a placement (`placement.apply`).
    pub fn scheduler() -> Self {
        Self::new("gantry-scheduler", ["scheduler"])
    }
}

/// Declares [`Action`] with the exact strings the policy matches (`input.action`).
macro_rules! actions {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// What a subject asks to do: every action the host and the daemon ask the policy
        /// about, serialised as the policy's `input.action` string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub enum Action {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl Action {
            /// Every action, in declaration order.
            pub const ALL: &[Action] = &[$(Action::$variant,)*];

            /// The policy's name for it (`job.submit`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }
        }
    };
}

actions! {
    /// Queue a job (resource: [`Resource::Admission`]).
    JobSubmit = "job.submit",
    /// Run a program the user brings as a job ([`Resource::Command`]); asked besides
    /// `job.submit`.
    JobExec = "job.exec",
    /// Cancel a job ([`Resource::Job`]).
    JobCancel = "job.cancel",
    /// See one job ([`Resource::Job`]).
    JobRead = "job.read",
    /// Download a succeeded training job's model ([`Resource::Model`]).
    JobModel = "job.model",
    /// List jobs ([`Resource::Empty`]; the host limits the listing to the user's tenants).
    JobList = "job.list",
    /// Read a dataset ([`Resource::Dataset`]).
    DatasetRead = "dataset.read",
    /// Upload a dataset ([`Resource::Dataset`]).
    DatasetWrite = "dataset.write",
    /// List datasets ([`Resource::Empty`]).
    DatasetList = "dataset.list",
    /// See the cluster's nodes and GPUs ([`Resource::Empty`]).
    ClusterRead = "cluster.read",
    /// Mark a GPU healthy or not ([`Resource::Gpu`]).
    GpuHealth = "gpu.health",
    /// A node's agent renews its lease and reports its GPUs ([`Resource::Node`]).
    NodeHeartbeat = "node.heartbeat",
    /// Remove a node that registered through its agent, once its agent is gone
    /// ([`Resource::Node`]).
    NodeRemove = "node.remove",
    /// A node's agent reports on a run it was handed: started, a log entry, progress, its end
    /// ([`Resource::Node`]).
    NodeReport = "node.report",
    /// A node's agent reads or writes what a run handed to it needs: the job's dataset and
    /// checkpoints ([`Resource::NodeJob`]).
    NodeData = "node.data",
    /// List plugins ([`Resource::Empty`]).
    PluginRead = "plugin.read",
    /// Upload a plugin ([`Resource::Plugin`]).
    PluginUpload = "plugin.upload",
    /// Make a scheduler plugin active ([`Resource::Plugin`]).
    PluginLoad = "plugin.load",
    /// Unload the active scheduler plugin ([`Resource::Plugin`], name only).
    PluginUnload = "plugin.unload",
    /// Replace the access-control policy ([`Resource::Empty`]).
    PolicyReplace = "policy.replace",
    /// See which policy is in force ([`Resource::Empty`]).
    PolicyRead = "policy.read",
    /// Rotate the master key ([`Resource::Empty`]).
    KeyRotate = "key.rotate",
    /// Manage a user and their tokens ([`Resource::User`]).
    UserManage = "user.manage",
    /// Read or verify the audit log ([`Resource::AuditLog`]).
    AuditRead = "audit.read",
    /// Apply a placement a scheduler proposed ([`Resource::Admission`]).
    PlacementApply = "placement.apply",
}

impl Action {
    /// Whether an allowed decision of it is recorded in aggregate ([`crate::audit::tally`]):
    /// the requests repeated by scripts polling, which read what the control plane keeps about
    /// jobs, the cluster, plugins and the policy, and a node's heartbeat (every node, every few
    /// seconds: 1,000 nodes wrote a thousand synced entries a second). Not a dataset's bytes
    /// (`dataset.read`, `node.data`), the audit log, a node's reports on its runs
    /// (`node.report`: a job's start and end; its output and progress are counted through
    /// [`Request::routine`]), or any other change.
    pub fn aggregated_when_allowed(self) -> bool {
        matches!(
            self,
            Action::JobRead
                | Action::JobList
                | Action::DatasetList
                | Action::ClusterRead
                | Action::PluginRead
                | Action::PolicyRead
                | Action::NodeHeartbeat
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action is done to: each variant serialises to the `input.resource` object the policy
/// documents for the actions that use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    /// `{}`: the action is about the host as a whole (listings, the cluster, the policy, keys).
    Empty {},
    /// A job that exists (`job.read`, `job.cancel`).
    Job(JobRef),
    /// A succeeded job's model (`job.model`).
    Model(ModelRef),
    /// GPUs a job would hold in its tenant (`job.submit`, `placement.apply`).
    Admission(Admission),
    /// A dataset (`dataset.read`, `dataset.write`).
    Dataset(DatasetRef),
    /// A program to run as a job (`job.exec`).
    Command(CommandRef),
    /// A GPU (`gpu.health`).
    Gpu {
        /// Its id.
        gpu: String,
    },
    /// A plugin (`plugin.upload`, `plugin.load`, `plugin.unload`).
    Plugin(PluginRef),
    /// A node of the cluster (`node.heartbeat`, `node.report`).
    Node {
        /// Its name.
        node: String,
    },
    /// A job as a node's agent asks for its data (`node.data`).
    NodeJob(NodeJobRef),
    /// A user (`user.manage`).
    User {
        /// Their name.
        user: String,
    },
    /// The audit log (`audit.read`).
    AuditLog {
        /// Which log: [`AUDIT_LOG`].
        log: String,
    },
}

/// The name the policy sees for the host's audit log.
pub const AUDIT_LOG: &str = "audit.log";

impl Resource {
    /// The host's audit log.
    pub fn audit_log() -> Self {
        Resource::AuditLog {
            log: AUDIT_LOG.to_string(),
        }
    }

    /// GPU `gpu`.
    pub fn gpu(gpu: impl Into<String>) -> Self {
        Resource::Gpu { gpu: gpu.into() }
    }

    /// Node `node`.
    pub fn node(node: impl Into<String>) -> Self {
        Resource::Node { node: node.into() }
    }

    /// User `user`.
    pub fn user(user: impl Into<String>) -> Self {
        Resource::User { user: user.into() }
    }
}

/// A job by tenant and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRef {
    /// The tenant whose queue holds it.
    pub tenant: String,
    /// Its name within the tenant.
    pub job: String,
}

/// A training job's model, and the classification of the data it learned from: a model can
/// give back what it was trained on, so it is read as that data is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRef {
    /// The tenant whose job trained it.
    pub tenant: String,
    /// The job's name within the tenant.
    pub job: String,
    /// Its training data's classification: its stored dataset's (`public`, ..., the policy's
    /// levels), `public` for synthetic rows, empty when its dataset is no longer known.
    pub classification: String,
}

/// A job whose data a node's agent asks for, and whether its current run was handed to that
/// node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeJobRef {
    /// The node.
    pub node: String,
    /// The job's tenant.
    pub tenant: String,
    /// Its name within the tenant.
    pub job: String,
    /// Whether the job's current run is on `node`.
    pub placed: bool,
}

/// A command job: its tenant, its name and the program it runs (`argv[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandRef {
    /// The tenant whose queue it goes to.
    pub tenant: String,
    /// Its name within the tenant.
    pub job: String,
    /// The program, as given (a name looked up in `PATH`, or a path).
    pub program: String,
}

/// A job's GPUs against its tenant's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admission {
    /// The tenant.
    pub tenant: String,
    /// GPUs the job asks for (or the placement gives it).
    pub gpus: u64,
    /// GPUs the tenant holds already.
    pub tenant_used_gpus: u64,
    /// The job's id.
    pub job: String,
}

/// A dataset and its classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetRef {
    /// Its name within the tenant.
    pub name: String,
    /// `public`, `internal`, `confidential` or `secret` (the policy's levels).
    pub classification: String,
    /// The tenant it belongs to.
    pub tenant: String,
}

/// A plugin, and whether a trusted key signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRef {
    /// Its name (a shipped plugin's, an upload's, or a path).
    pub name: String,
    /// Whether a key the host trusts signed it; absent when the question does not arise
    /// (unloading).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<bool>,
    /// Asked before an upload's body is read: would the policy let this caller upload a signed
    /// plugin of this name? (The decision on the plugin itself follows.)
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub before_body: bool,
}

impl PluginRef {
    /// Plugin `name`, signed by a trusted key or not.
    pub fn new(name: impl Into<String>, signed: bool) -> Self {
        Self {
            name: name.into(),
            signed: Some(signed),
            before_body: false,
        }
    }

    /// Plugin `name`, where only the name matters (unloading).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            signed: None,
            before_body: false,
        }
    }

    /// An upload of plugin `name` not read yet, asked about as if signed.
    pub fn before_body(name: impl Into<String>) -> Self {
        Self {
            before_body: true,
            ..Self::new(name, true)
        }
    }
}

impl From<JobRef> for Resource {
    fn from(r: JobRef) -> Self {
        Resource::Job(r)
    }
}

impl From<ModelRef> for Resource {
    fn from(r: ModelRef) -> Self {
        Resource::Model(r)
    }
}

impl From<Admission> for Resource {
    fn from(r: Admission) -> Self {
        Resource::Admission(r)
    }
}

impl From<DatasetRef> for Resource {
    fn from(r: DatasetRef) -> Self {
        Resource::Dataset(r)
    }
}

impl From<CommandRef> for Resource {
    fn from(r: CommandRef) -> Self {
        Resource::Command(r)
    }
}

impl From<PluginRef> for Resource {
    fn from(r: PluginRef) -> Self {
        Resource::Plugin(r)
    }
}

/// One question for the policy: its input, `{"subject", "action", "resource"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Who asks.
    pub subject: Subject,
    /// What they ask to do.
    pub action: Action,
    /// To what.
    pub resource: Resource,
    /// Whether an allowed decision of it is counted into the audit log's next
    /// `decision.summary` rather than an entry of its own, whatever its action: a repeated,
    /// routine request ([`Request::routine`]). Not part of the policy's input.
    #[serde(skip)]
    pub routine: bool,
}

impl Request {
    /// `subject` asks to do `action` to `resource`.
    pub fn new(subject: Subject, action: Action, resource: impl Into<Resource>) -> Self {
        Self {
            subject,
            action,
            resource: resource.into(),
            routine: false,
        }
    }

    /// This request, allowed, recorded in aggregate ([`crate::audit::tally`]): a node's report
    /// of a run's output or progress (a chatty run made a few a second, each an entry of its
    /// own: half a megabyte of audit log a minute from one tenant's four jobs). Its start and
    /// end stay an entry each.
    pub fn routine(mut self) -> Self {
        self.routine = true;
        self
    }

    /// The policy's input, as JSON.
    pub fn input(&self) -> serde_json::Value {
        serde_json::json!({
            "subject": self.subject,
            "action": self.action,
            "resource": self.resource,
        })
    }
}

#[cfg(test)]
mod tests;
