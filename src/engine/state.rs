//! The state machines of executions and step runs: every allowed transition is listed here, and
//! the engine refuses any other.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Created; its first steps are about to be claimed.
    Queued,
    /// Steps are being scheduled.
    Running,
    /// No new step is scheduled until an operator resumes it (on request, after a `pause`
    /// failure, an interrupted step, or a failover started by a hook that awaits confirmation).
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

/// Where a step run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waits for its dependencies.
    Pending,
    /// May be claimed by a worker (at `next_attempt_at`).
    Ready,
    /// A worker holds its lease.
    Running,
    /// A manual approval waits for a person.
    WaitingApproval,
    Succeeded,
    Failed,
    /// Not run: not in this mode, skipped by an operator, or blocked by a failed dependency.
    Skipped,
    Cancelled,
    /// Its worker died mid-run and it is not idempotent: an operator decides.
    Interrupted,
}

macro_rules! str_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(format!("`{other}` is not a {}", stringify!($ty))),
                }
            }
        }
    };
}

str_enum!(ExecutionStatus {
    Queued => "queued",
    Running => "running",
    Paused => "paused",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

str_enum!(StepStatus {
    Pending => "pending",
    Ready => "ready",
    Running => "running",
    WaitingApproval => "waiting_approval",
    Succeeded => "succeeded",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
    Interrupted => "interrupted",
});

impl ExecutionStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn can_transition(self, to: Self) -> bool {
        use ExecutionStatus::*;
        matches!(
            (self, to),
            (Queued, Running | Paused | Cancelled | Succeeded | Failed)
                | (Running, Paused | Succeeded | Failed | Cancelled)
                | (Paused, Running | Cancelled | Failed)
        )
    }
}

impl StepStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    /// Whether the step counts as done for its dependents (they may start).
    pub fn satisfies_dependents(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped)
    }

    pub fn can_transition(self, to: Self) -> bool {
        use StepStatus::*;
        matches!(
            (self, to),
            (Pending, Ready | Skipped | Cancelled)
                | (Ready, Running | WaitingApproval | Skipped | Cancelled)
                | (Running, Succeeded | Failed | Ready | Cancelled | Interrupted | WaitingApproval)
                | (WaitingApproval, Succeeded | Failed | Cancelled)
                // An operator retries or skips a failed or interrupted step.
                | (Failed, Ready | Skipped)
                | (Interrupted, Ready | Skipped | Cancelled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_execution_edge_is_walked() {
        use ExecutionStatus::*;
        let allowed = [
            (Queued, Running),
            (Queued, Paused),
            (Queued, Cancelled),
            (Queued, Succeeded),
            (Queued, Failed),
            (Running, Paused),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
            (Paused, Running),
            (Paused, Cancelled),
            (Paused, Failed),
        ];
        for &from in ExecutionStatus::ALL {
            for &to in ExecutionStatus::ALL {
                assert_eq!(
                    from.can_transition(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        for &s in ExecutionStatus::ALL {
            if s.is_final() {
                assert!(
                    ExecutionStatus::ALL.iter().all(|&to| !s.can_transition(to)),
                    "{s} is final"
                );
            }
            assert_eq!(s.as_str().parse::<ExecutionStatus>().unwrap(), s);
        }
    }

    #[test]
    fn every_step_edge_is_walked() {
        use StepStatus::*;
        let allowed = [
            (Pending, Ready),
            (Pending, Skipped),
            (Pending, Cancelled),
            (Ready, Running),
            (Ready, WaitingApproval),
            (Ready, Skipped),
            (Ready, Cancelled),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Ready),
            (Running, Cancelled),
            (Running, Interrupted),
            (Running, WaitingApproval),
            (WaitingApproval, Succeeded),
            (WaitingApproval, Failed),
            (WaitingApproval, Cancelled),
            (Failed, Ready),
            (Failed, Skipped),
            (Interrupted, Ready),
            (Interrupted, Skipped),
            (Interrupted, Cancelled),
        ];
        for &from in StepStatus::ALL {
            for &to in StepStatus::ALL {
                assert_eq!(
                    from.can_transition(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            assert_eq!(from.as_str().parse::<StepStatus>().unwrap(), from);
        }
        assert!(Succeeded.satisfies_dependents() && Skipped.satisfies_dependents());
        assert!(!Failed.satisfies_dependents() && !Interrupted.satisfies_dependents());
    }
}
