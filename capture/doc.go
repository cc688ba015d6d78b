// Package capture decodes iSCSI from packet captures, as a gopacket layer and
// as a stream decoder that reassembles TCP and resynchronizes mid-stream.
// It also records a live connection's traffic into a pcap file that
// Wireshark and tshark read as an ordinary TCP capture.
package capture
