//! Byte credit: what this side may still send (`SendWindow`) and what it owes the peer
//! (`RecvWindow`).

/// Credit this side holds for sending.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendWindow {
    available: u64,
}

impl SendWindow {
    pub(crate) fn new(initial: u64) -> Self {
        SendWindow { available: initial }
    }

    pub(crate) fn available(&self) -> u64 {
        self.available
    }

    pub(crate) fn can_send(&self, len: usize) -> bool {
        len as u64 <= self.available
    }

    pub(crate) fn consume(&mut self, len: usize) {
        self.available = self.available.saturating_sub(len as u64);
    }

    pub(crate) fn grant(&mut self, bytes: u64) {
        self.available = self.available.saturating_add(bytes);
    }
}

/// Credit this side granted the peer, and what the application has consumed since the last grant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvWindow {
    initial: u64,
    /// Bytes the peer may still send.
    remaining: u64,
    /// Bytes consumed by the application and not yet granted back.
    pending: u64,
}

impl RecvWindow {
    pub(crate) fn new(initial: u64) -> Self {
        RecvWindow { initial, remaining: initial, pending: 0 }
    }

    /// Accounts for `len` received bytes; false if the peer had no credit for them.
    pub(crate) fn receive(&mut self, len: usize) -> bool {
        let len = len as u64;
        if len > self.remaining {
            return false;
        }
        self.remaining -= len;
        true
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Records consumption; returns the bytes to grant now, if enough piled up (half the window:
    /// fewer credit frames without starving the sender).
    pub(crate) fn release(&mut self, len: usize) -> Option<u64> {
        self.pending = self.pending.saturating_add(len as u64);
        if self.pending >= self.initial / 2 {
            let grant = self.pending;
            self.pending = 0;
            self.remaining = self.remaining.saturating_add(grant);
            Some(grant)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_refuses_more_than_granted() {
        let mut window = RecvWindow::new(100);
        assert!(window.receive(60));
        assert!(!window.receive(41));
        assert!(window.receive(40));
        assert_eq!(window.remaining(), 0);
    }

    #[test]
    fn release_grants_in_batches_of_half_a_window() {
        let mut window = RecvWindow::new(100);
        assert!(window.receive(100));
        assert_eq!(window.release(30), None);
        assert_eq!(window.release(30), Some(60));
        assert_eq!(window.remaining(), 60);
    }

    #[test]
    fn send_window_consumes_and_grows() {
        let mut window = SendWindow::new(10);
        assert!(window.can_send(10));
        window.consume(10);
        assert!(!window.can_send(1));
        window.grant(5);
        assert_eq!(window.available(), 5);
    }
}
