// Package testutil holds the helpers the test packages share: waiting on a
// goroutine's result with a bound, data patterns and CDBs, logging in to the
// scripted fake target (internal/faketarget), and the checks the interop
// tests run against real peers (write-and-verify, concurrent I/O, captures
// decoded by tshark).
//
// What goes where:
//
//   - internal/faketarget is the one scripted fake target: the target's end
//     of a connection, PDU by PDU or byte by byte. It imports pdu only.
//   - internal/testutil (this package) drives the initiator against it and
//     against real peers. It imports pdu, capture, internal/peers and
//     internal/faketarget, and never session, initiator or logout: the
//     session package's own (internal) tests import it, and a package it
//     imported could not import them back. Helpers that need the session's
//     types are generic (Go, Recv, FakeLogin) or take a small interface
//     (BlockIO); the few lines that name session types (readCmd, a Config)
//     stay in each test package.
//   - iscsitest is the in-memory target with fault injection, an
//     independent oracle; it uses neither of the two above in its non-test
//     code.
package testutil
