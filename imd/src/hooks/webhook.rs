//! The webhook of committed messages: a durable outbox drained per conversation.
