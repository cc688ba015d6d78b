// Package pdu encodes and decodes the Protocol Data Units of iSCSI (RFC 7143):
// the 48-byte Basic Header Segment of every opcode, additional header
// segments, data segments with padding, CRC32C digests and text key=value
// segments.
//
// It knows nothing of sockets or sessions. Every length read from the network
// is checked against a limit before anything is allocated, and every malformed
// input yields a typed error (*ProtocolError, *DigestError) rather than a panic.
package pdu
