//! Session dialogues in virtual time.
