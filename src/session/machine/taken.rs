//! What the driver takes from the session's events: the next one, or, right after one it
//! polled, the event that belongs with it (a server's whole unary request after `Incoming`, a
//! client's `Closed` after the reply that ended the call), so the two are handled in one step.

use bytes::Bytes;

use super::Session;
use crate::session::{Body, Event};
use crate::status::Status;

impl<B: Body> Session<B> {
    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`poll_event`](Self::poll_event) has something: a driver that feeds messages in
    /// a batch can stop to handle what one of them brought.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Server: the request of call `id` when it came whole in its CALL frame (one message, and the
    /// end of the client's stream), taken out of the events; `None`, with the events left as they
    /// are, for any other call. Called right after `Incoming { id }` was polled, it is what lets a
    /// driver run a unary call to completion at once: the request is the next event.
    pub fn take_request(&mut self, id: u64) -> Option<Bytes> {
        match self.events.front() {
            Some(Event::Message { id: next, end: true, .. }) if *next == id => match self.events.pop_front() {
                Some(Event::Message { body, .. }) => Some(body),
                _ => None,
            },
            _ => None,
        }
    }

    /// Client: how call `id` ended, when that is the next event (the reply just polled ended the
    /// call), taken out of the events; `None`, with the events left as they are, otherwise.
    pub fn take_closed(&mut self, id: u64) -> Option<Status> {
        match self.events.front() {
            Some(Event::Closed { id: next, .. }) if *next == id => match self.events.pop_front() {
                Some(Event::Closed { status, .. }) => Some(status),
                _ => None,
            },
            _ => None,
        }
    }
}
