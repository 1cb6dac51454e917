//! The controller thread: see the module documentation of the parent.
