//! Tests of the scheduler through its public contract: golden traces of scenarios
//! (`trace`, data in `testdata/`), and random operation sequences checked against invariants and
//! a fake engine that verifies KV contents (`props`).

mod engine;
mod props;
mod trace;
