// Package session runs one iSCSI session from the initiator's side: login
// with parameter negotiation and CHAP, discovery, SCSI commands within the
// CmdSN window, NOP keepalive, asynchronous messages, several connections per
// session, and the Logout Request/Response exchange of each connection.
//
// It knows nothing of sessions as a set; the initiator package keeps the
// table and the logout package logs many sessions out at once.
package session
