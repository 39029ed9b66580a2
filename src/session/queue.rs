//! A call's send queue: first in, first out, with the front item held inline.
//!
//! Most calls never have more than one frame waiting (a unary request, a unary reply), so the
//! front lives in the queue itself and only a second waiting item spills into a `VecDeque`. That
//! saves a heap allocation per call on both sides of every unary call; longer queues behave as a
//! plain `VecDeque`. The spill is boxed, 8 bytes instead of 32 in every call's record: with it,
//! the record stays under the size where moving it into and out of the call map becomes a
//! `memcpy` call (a stream that ever queues two frames pays one allocation more, once).

use std::collections::VecDeque;

/// FIFO queue; invariant: `rest` holds nothing whenever `front` is `None`.
#[derive(Debug)]
pub(super) struct SendQueue<T> {
    front: Option<T>,
    #[expect(clippy::box_collection, reason = "8 bytes in every call record instead of 32; see the module overview")]
    rest: Option<Box<VecDeque<T>>>,
}

impl<T> Default for SendQueue<T> {
    fn default() -> Self {
        SendQueue { front: None, rest: None }
    }
}

impl<T> SendQueue<T> {
    /// Appends an item.
    pub(super) fn push_back(&mut self, item: T) {
        if self.front.is_none() {
            self.front = Some(item);
        } else {
            self.rest.get_or_insert_default().push_back(item);
        }
    }

    /// The oldest item.
    pub(super) fn front(&self) -> Option<&T> {
        self.front.as_ref()
    }

    /// Removes and returns the oldest item.
    pub(super) fn pop_front(&mut self) -> Option<T> {
        let item = self.front.take();
        self.front = self.rest.as_mut().and_then(|rest| rest.pop_front());
        item
    }

    /// Whether nothing is waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.front.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::SendQueue;

    #[test]
    fn keeps_order_across_the_inline_front_and_the_spill() {
        let mut queue = SendQueue::default();
        assert!(queue.is_empty());
        queue.push_back(1);
        queue.push_back(2);
        queue.push_back(3);
        assert_eq!(queue.front(), Some(&1));
        assert_eq!(queue.pop_front(), Some(1));
        queue.push_back(4);
        assert_eq!(queue.pop_front(), Some(2));
        assert_eq!(queue.pop_front(), Some(3));
        assert_eq!(queue.front(), Some(&4));
        assert_eq!(queue.pop_front(), Some(4));
        assert!(queue.is_empty());
        assert_eq!(queue.pop_front(), None);
    }
}
