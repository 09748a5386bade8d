//! Rotation decisions: who is eligible, when a rotation is due and why, and what an
//! attempt's result means. The rotation protocol (ENGINE.md §7) lives in the binary; the
//! rules it follows are here, pure.

use crate::types::RotationReason;
use chrono::{DateTime, Duration, Utc};

/// After Graph refuses a rotation, the scheduler waits this long before trying again:
/// a refusal (an admin account, a policy) does not go away by itself within minutes.
pub const REFUSAL_BACKOFF_HOURS: i64 = 24;

/// What the rules need to know of a user and their domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationFacts {
    /// Imported and active.
    pub active: bool,
    /// In scope of the sync group.
    pub in_sync_group: bool,
    /// Member of the rotation group.
    pub in_rotation_group: bool,
    /// A hardware key is assigned.
    pub has_key: bool,
    /// A rotation is in flight.
    pub pending: bool,
    /// The last rotation's outcome is unknown: an admin looks first.
    pub needs_attention: bool,
    /// When the last rotation succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// When the password was last revealed.
    pub last_revealed: Option<DateTime<Utc>>,
    /// When Graph last refused a rotation of this user (a definite failure).
    pub last_refused: Option<DateTime<Utc>>,
    /// The domain's `auto_password_change_days`.
    pub every_days: Option<u16>,
    /// The domain's `rotate_after_reveal_hours`.
    pub after_reveal_hours: u32,
}

impl RotationFacts {
    /// Scheduled rotations apply to the user at all.
    pub fn eligible(&self) -> bool {
        self.active
            && self.in_sync_group
            && self.in_rotation_group
            && self.has_key
            && self.every_days.is_some()
    }

    /// When the next scheduled rotation is due, and why, seen at `now` (a user never
    /// rotated is due `now`); `None` when none is scheduled.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, RotationReason)> {
        if !self.eligible() || self.pending || self.needs_attention {
            return None;
        }
        let days = self.every_days?;
        let not_before = self
            .last_refused
            .filter(|r| self.last_success.is_none_or(|s| *r > s))
            .map(|r| r + Duration::hours(REFUSAL_BACKOFF_HOURS));
        let later = |t: DateTime<Utc>| not_before.map_or(t, |n| n.max(t));
        let Some(last) = self.last_success else {
            return Some((later(now), RotationReason::Initial));
        };
        let scheduled = last + Duration::days(i64::from(days));
        let after_reveal = self
            .last_revealed
            .filter(|r| *r >= last)
            .map(|r| r + Duration::hours(i64::from(self.after_reveal_hours)));
        Some(match after_reveal {
            Some(t) if t < scheduled => (later(t), RotationReason::AfterReveal),
            _ => (later(scheduled), RotationReason::Scheduled),
        })
    }

    /// Due at `now`.
    pub fn due_at(&self, now: DateTime<Utc>) -> Option<RotationReason> {
        self.next_due(now)
            .filter(|(t, _)| *t <= now)
            .map(|(_, reason)| reason)
    }
}

/// What one attempt to set the password in Graph came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// Graph set it.
    Set,
    /// Graph refused (a 4xx other than throttling): retrying cannot help.
    Refused {
        /// Graph's error code.
        code: Option<String>,
        /// What it said.
        error: String,
    },
    /// No answer, a 5xx, or throttling past the client's retries: it may or may not be set.
    Unknown {
        /// What happened.
        error: String,
    },
}

/// What to do after attempt number `attempt` (1-based) of at most `max_attempts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Record success and queue the key write.
    Succeed,
    /// Record a definite failure: the previous password stays current.
    Fail {
        /// Graph's error code.
        code: Option<String>,
        /// What it said.
        error: String,
    },
    /// Record the retry and try the same password again.
    Retry {
        /// The attempt that failed.
        attempt: u32,
        /// What happened.
        error: String,
    },
    /// Give up with the outcome unknown: both candidates are kept, the user needs attention.
    GiveUp {
        /// What happened last.
        error: String,
    },
}

/// The protocol's decision after an attempt.
pub fn after_attempt(result: AttemptResult, attempt: u32, max_attempts: u32) -> NextStep {
    match result {
        AttemptResult::Set => NextStep::Succeed,
        AttemptResult::Refused { code, error } => NextStep::Fail { code, error },
        AttemptResult::Unknown { error } if attempt < max_attempts => {
            NextStep::Retry { attempt, error }
        }
        AttemptResult::Unknown { error } => NextStep::GiveUp { error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap()
    }

    fn facts() -> RotationFacts {
        RotationFacts {
            active: true,
            in_sync_group: true,
            in_rotation_group: true,
            has_key: true,
            pending: false,
            needs_attention: false,
            last_success: None,
            last_revealed: None,
            last_refused: None,
            every_days: Some(7),
            after_reveal_hours: 24,
        }
    }

    #[test]
    fn an_eligible_user_never_rotated_is_due_at_once() {
        assert_eq!(facts().due_at(t(1)), Some(RotationReason::Initial));
    }

    #[test]
    fn every_condition_of_eligibility_is_needed() {
        let cases = [
            RotationFacts {
                active: false,
                ..facts()
            },
            RotationFacts {
                in_sync_group: false,
                ..facts()
            },
            RotationFacts {
                in_rotation_group: false,
                ..facts()
            },
            RotationFacts {
                has_key: false,
                ..facts()
            },
            RotationFacts {
                every_days: None,
                ..facts()
            },
            RotationFacts {
                pending: true,
                ..facts()
            },
            RotationFacts {
                needs_attention: true,
                ..facts()
            },
        ];
        for f in cases {
            assert_eq!(f.due_at(t(30)), None, "{f:?}");
        }
    }

    #[test]
    fn a_rotation_is_due_when_the_last_success_is_old_enough() {
        let f = RotationFacts {
            last_success: Some(t(1)),
            ..facts()
        };
        assert_eq!(f.due_at(t(7)), None);
        assert_eq!(f.due_at(t(8)), Some(RotationReason::Scheduled));
        assert_eq!(f.next_due(t(2)), Some((t(8), RotationReason::Scheduled)));
    }

    #[test]
    fn a_reveal_brings_the_next_rotation_forward() {
        let f = RotationFacts {
            last_success: Some(t(1)),
            last_revealed: Some(t(2)),
            ..facts()
        };
        assert_eq!(f.next_due(t(2)), Some((t(3), RotationReason::AfterReveal)));
        // A reveal before the last rotation is of an older password: it does not count.
        let f = RotationFacts {
            last_success: Some(t(2)),
            last_revealed: Some(t(1)),
            ..facts()
        };
        assert_eq!(f.next_due(t(2)), Some((t(9), RotationReason::Scheduled)));
    }

    #[test]
    fn after_a_refusal_the_scheduler_waits_a_day() {
        let f = RotationFacts {
            last_refused: Some(t(1)),
            ..facts()
        };
        assert_eq!(f.due_at(t(1)), None);
        assert_eq!(f.due_at(t(2)), Some(RotationReason::Initial));
        // A refusal older than the last success does not count.
        let f = RotationFacts {
            last_refused: Some(t(1)),
            last_success: Some(t(3)),
            ..facts()
        };
        assert_eq!(f.next_due(t(4)), Some((t(10), RotationReason::Scheduled)));
    }

    #[test]
    fn refusals_end_at_once_and_unknown_outcomes_retry_then_give_up() {
        assert_eq!(after_attempt(AttemptResult::Set, 1, 3), NextStep::Succeed);
        let refused = AttemptResult::Refused {
            code: Some("Request_BadRequest".into()),
            error: "complexity".into(),
        };
        assert!(matches!(
            after_attempt(refused, 1, 3),
            NextStep::Fail { .. }
        ));
        let unknown = || AttemptResult::Unknown {
            error: "503".into(),
        };
        assert_eq!(
            after_attempt(unknown(), 1, 3),
            NextStep::Retry {
                attempt: 1,
                error: "503".into()
            }
        );
        assert_eq!(
            after_attempt(unknown(), 3, 3),
            NextStep::GiveUp {
                error: "503".into()
            }
        );
    }
}
