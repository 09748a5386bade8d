//! Decisions written as their rules read: `given(past events).when(command).then(events)`
//! or `.then_reject(rejection)`, over one kind of stream.

use super::Rejection;
use crate::Event;
use std::fmt::Debug;

/// A kind of stream: how its events fold into state and how a command is decided on it.
pub trait Stream {
    type State: Default;
    type Command: Debug;
    fn evolve(state: Self::State, event: &Event) -> Self::State;
    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Event>, Rejection>;
}

/// A domain's stream.
pub struct DomainStream;
/// The tokens stream.
pub struct TokensStream;
/// A user's stream.
pub struct UserStream;

impl Stream for DomainStream {
    type State = super::domain::DomainState;
    type Command = super::domain::DomainCommand;
    fn evolve(state: Self::State, event: &Event) -> Self::State {
        super::domain::evolve(state, event)
    }
    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Event>, Rejection> {
        super::domain::decide(state, command)
    }
}

impl Stream for TokensStream {
    type State = super::tokens::TokensState;
    type Command = super::tokens::TokenCommand;
    fn evolve(state: Self::State, event: &Event) -> Self::State {
        super::tokens::evolve(state, event)
    }
    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Event>, Rejection> {
        super::tokens::decide(state, command)
    }
}

impl Stream for UserStream {
    type State = super::user::UserState;
    type Command = super::user::UserCommand;
    fn evolve(state: Self::State, event: &Event) -> Self::State {
        super::user::evolve(state, event)
    }
    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Event>, Rejection> {
        super::user::decide(state, command)
    }
}

/// A stream after `past`.
pub struct Given<S: Stream> {
    past: Vec<Event>,
    state: S::State,
}

/// The stream of kind `S` after `past`.
pub fn given<S: Stream>(past: &[Event]) -> Given<S> {
    Given {
        past: past.to_vec(),
        state: past.iter().fold(S::State::default(), S::evolve),
    }
}

impl<S: Stream> Given<S> {
    /// The state the decision sees.
    pub fn state(&self) -> &S::State {
        &self.state
    }

    /// Decides `command`.
    pub fn when(&self, command: S::Command) -> Then {
        let what = format!("given {:?}\nwhen {command:?}", kinds(&self.past));
        Then {
            what,
            result: S::decide(&self.state, command),
        }
    }
}

/// A decision's result, to check.
#[must_use = "a decision is checked with then…"]
pub struct Then {
    what: String,
    result: Result<Vec<Event>, Rejection>,
}

impl Then {
    /// The decision appends exactly `events`.
    #[track_caller]
    pub fn then(self, events: impl Into<Vec<Event>>) {
        assert_eq!(self.result, Ok(events.into()), "{}", self.what);
    }

    /// The decision appends nothing (the command changes nothing).
    #[track_caller]
    pub fn then_nothing(self) {
        self.then(Vec::new());
    }

    /// The decision is refused so.
    #[track_caller]
    pub fn then_reject(self, rejection: Rejection) {
        assert_eq!(self.result, Err(rejection), "{}", self.what);
    }

    /// The decision is refused as invalid, naming `field`.
    #[track_caller]
    pub fn then_invalid(self, field: &str) {
        match &self.result {
            Err(Rejection::Invalid { field: f, .. }) if *f == field => {}
            other => panic!("{}\nthen: invalid {field}; got {other:?}", self.what),
        }
    }

    /// The decision is refused as a conflict with the stream's state.
    #[track_caller]
    pub fn then_conflict(self) {
        match &self.result {
            Err(Rejection::Conflict(_)) => {}
            other => panic!("{}\nthen: a conflict; got {other:?}", self.what),
        }
    }

    /// The decision appends events; they are returned for a closer look.
    #[track_caller]
    pub fn then_ok(self) -> Vec<Event> {
        match self.result {
            Ok(events) => events,
            Err(r) => panic!("{}\nthen: accepted; got {r:?}", self.what),
        }
    }
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind).collect()
}
