//! What leaves the session: data frames queued by the application, in order and as credit
//! allows, drained by [`Session::poll_transmit`].
//!
//! A data frame normally waits in its call's queue, and the call in the round-robin of calls
//! with something to send, until `poll_transmit` finds credit for it. When nothing waits ahead of
//! a frame (no call in the round-robin, nothing queued on its own call) and the windows hold it,
//! the queues would only hand it straight back: it is charged to the windows at once and goes
//! into `sendable`, which `poll_transmit` drains first, in order. A unary request and a unary
//! reply take that lane, which skips a look-up of the call and the round-robin's bookkeeping on
//! each side of every call. Order holds: a call's later frames go behind it, into `sendable` or
//! into a queue that is only drained once `sendable` is empty.

use super::{Call, Pending, Session};
use crate::session::{Body, Role, Transmit};
use crate::wire::{Frame, FrameHeader};

impl<B: Body> Session<B> {
    /// The next frame to send: control frames first, then data that already passed flow
    /// control, then call data round-robin, as credit allows.
    pub fn poll_transmit(&mut self) -> Option<Transmit<B>> {
        if let Some(frame) = self.control.pop_front() {
            return Some(Transmit::Control(frame));
        }
        // Also once closed after a graceful drain: the reply that ended the last call is here.
        if let Some(transmit) = self.sendable.pop_front() {
            return Some(transmit);
        }
        if !self.is_ready() {
            return None;
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(call) = self.calls.get_mut(&id) else { continue };
            call.ready = false;
            let sendable = match call.queue.front() {
                None => continue,
                Some(Pending::StreamEnd | Pending::Trailer(_)) => true,
                Some(Pending::Data { body, .. }) => {
                    let len = body.body_len();
                    if !self.conn_send.can_send(len) {
                        // Blocked on the connection window: a connection CREDIT re-queues it.
                        self.ready.push_front(id);
                        call.ready = true;
                        return None;
                    }
                    call.send.can_send(len)
                }
            };
            if !sendable {
                continue; // blocked on the call window: a CREDIT for this call re-queues it
            }
            let transmit = match call.queue.pop_front() {
                Some(Pending::Data { header, body }) => {
                    call.send.consume(body.body_len());
                    self.conn_send.consume(body.body_len());
                    Transmit::Data { header, body }
                }
                Some(Pending::StreamEnd) => Transmit::Control(Frame::StreamEnd { id }),
                Some(Pending::Trailer(status)) => Transmit::Control(Frame::Trailer { id, status }),
                None => continue,
            };
            let finished = call.queue.is_empty() && call.local_end && self.role == Role::Server;
            if finished {
                self.remove_call(id);
                self.check_drained();
            } else if !call.queue.is_empty() {
                call.ready = true;
                self.ready.push_back(id);
            }
            return Some(transmit);
        }
        None
    }

    /// Queues a data frame of `call` (held out of the call map by the caller): into `sendable`,
    /// charged to the windows now, when nothing waits ahead of it and credit allows (true);
    /// otherwise into the call's queue, with the call in the round-robin (false).
    pub(super) fn queue_data(&mut self, call: &mut Call<B>, header: FrameHeader, body: B) -> bool {
        let len = body.body_len();
        if self.is_ready()
            && self.ready.is_empty()
            && call.queue.is_empty()
            && self.conn_send.can_send(len)
            && call.send.can_send(len)
        {
            call.send.consume(len);
            self.conn_send.consume(len);
            self.sendable.push_back(Transmit::Data { header, body });
            return true;
        }
        call.queue.push_back(Pending::Data { header, body });
        if !call.ready {
            call.ready = true;
            self.ready.push_back(header.call_id);
        }
        false
    }

    /// Puts call `id` in the round-robin if it has something queued.
    pub(super) fn make_ready(&mut self, id: u64) {
        if let Some(call) = self.calls.get_mut(&id)
            && !call.ready
            && !call.queue.is_empty()
        {
            call.ready = true;
            self.ready.push_back(id);
        }
    }

    /// Drops what call `id` has in `sendable`: it ended on this side before its frames left (a
    /// client's cancellation or deadline, a server's deadline), so the peer must not get them
    /// after the trailer that ends it.
    pub(super) fn unsend(&mut self, id: u64) {
        if !self.sendable.is_empty() {
            self.sendable.retain(|transmit| !matches!(transmit, Transmit::Data { header, .. } if header.call_id == id));
        }
    }
}
