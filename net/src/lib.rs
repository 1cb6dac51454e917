//! Sluice network layer.
