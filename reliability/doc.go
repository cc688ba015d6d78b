// Package reliability tests the initiator against hostile targets and hard
// days: the fault matrix of docs/RELIABILITY.md (one test per row), leak and
// soak runs, writes racing logouts with every write reported done read back,
// and CHAP secret hygiene. It has no code of its own; SOAK=1 turns the short
// soak and no-data-loss runs into their long forms.
package reliability
