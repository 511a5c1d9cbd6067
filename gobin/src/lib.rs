//! Go binary analysis.
