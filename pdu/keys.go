package pdu

// KeyKind says how a login or text key is negotiated (RFC 7143 §6.2, §13).
type KeyKind uint8

// Key kinds.
const (
	// KeyDeclared: declared by the initiator in its first Login Request
	// (InitiatorName, TargetName, SessionType).
	KeyDeclared KeyKind = iota
	// KeyAlias: InitiatorAlias, declared by the initiator at any time.
	KeyAlias
	// KeyTargetOnly: only a target sends it (TargetAlias, TargetAddress,
	// TargetPortalGroupTag).
	KeyTargetOnly
	// KeySecurity: the security stage only (AuthMethod, the CHAP keys).
	KeySecurity
	// KeyFFPOnly: full feature phase only (SendTargets).
	KeyFFPOnly
	// KeyMin: numerical, the result is the smaller of the two values.
	KeyMin
	// KeyMax: numerical, the result is the larger.
	KeyMax
	// KeyOr: Boolean, the result is the OR of the two values.
	KeyOr
	// KeyAnd: Boolean, the result is the AND.
	KeyAnd
	// KeyDigest: a list of None and CRC32C; the answer is the first of
	// the offer the answerer accepts.
	KeyDigest
	// KeyMRDSL: MaxRecvDataSegmentLength, declarative: each side states
	// its own.
	KeyMRDSL
	// KeyTaskReporting: a list, of which this package knows RFC3720.
	KeyTaskReporting
	// KeyObsolete: the RFC 3720 marker keys, which RFC 7143 dropped.
	KeyObsolete
)

// Key is how RFC 7143 §13 defines one key. The initiator's negotiator
// (package session) and the in-memory target's (package iscsitest) both
// read this one table.
type Key struct {
	Kind KeyKind
	// LeadingOnly: the key may be negotiated on the leading connection of
	// a session only (LO).
	LeadingOnly bool
	// NotDiscovery: the key is irrelevant to a discovery session.
	NotDiscovery bool
	// Min and Max bound a numerical key's value.
	Min, Max uint64
	// Default is the RFC's default value.
	Default string
}

var keys = map[string]Key{
	"InitiatorName":            {Kind: KeyDeclared},
	"TargetName":               {Kind: KeyDeclared},
	"SessionType":              {Kind: KeyDeclared, LeadingOnly: true},
	"InitiatorAlias":           {Kind: KeyAlias},
	"TargetAlias":              {Kind: KeyTargetOnly},
	"TargetAddress":            {Kind: KeyTargetOnly},
	"TargetPortalGroupTag":     {Kind: KeyTargetOnly, Min: 0, Max: 65535},
	"AuthMethod":               {Kind: KeySecurity},
	"CHAP_A":                   {Kind: KeySecurity},
	"CHAP_I":                   {Kind: KeySecurity},
	"CHAP_C":                   {Kind: KeySecurity},
	"CHAP_N":                   {Kind: KeySecurity},
	"CHAP_R":                   {Kind: KeySecurity},
	"SendTargets":              {Kind: KeyFFPOnly},
	"HeaderDigest":             {Kind: KeyDigest, Default: "None"},
	"DataDigest":               {Kind: KeyDigest, Default: "None"},
	"MaxRecvDataSegmentLength": {Kind: KeyMRDSL, Min: 512, Max: MaxDataSegmentLength, Default: "8192"},
	"MaxConnections":           {Kind: KeyMin, LeadingOnly: true, NotDiscovery: true, Min: 1, Max: 65535, Default: "1"},
	"InitialR2T":               {Kind: KeyOr, LeadingOnly: true, NotDiscovery: true, Default: "Yes"},
	"ImmediateData":            {Kind: KeyAnd, LeadingOnly: true, NotDiscovery: true, Default: "Yes"},
	"MaxBurstLength":           {Kind: KeyMin, LeadingOnly: true, NotDiscovery: true, Min: 512, Max: MaxDataSegmentLength, Default: "262144"},
	"FirstBurstLength":         {Kind: KeyMin, LeadingOnly: true, NotDiscovery: true, Min: 512, Max: MaxDataSegmentLength, Default: "65536"},
	"DefaultTime2Wait":         {Kind: KeyMax, LeadingOnly: true, Min: 0, Max: 3600, Default: "2"},
	"DefaultTime2Retain":       {Kind: KeyMin, LeadingOnly: true, Min: 0, Max: 3600, Default: "20"},
	"MaxOutstandingR2T":        {Kind: KeyMin, LeadingOnly: true, NotDiscovery: true, Min: 1, Max: 65535, Default: "1"},
	"DataPDUInOrder":           {Kind: KeyOr, LeadingOnly: true, NotDiscovery: true, Default: "Yes"},
	"DataSequenceInOrder":      {Kind: KeyOr, LeadingOnly: true, NotDiscovery: true, Default: "Yes"},
	"ErrorRecoveryLevel":       {Kind: KeyMin, LeadingOnly: true, Min: 0, Max: 2, Default: "0"},
	"TaskReporting":            {Kind: KeyTaskReporting, LeadingOnly: true, NotDiscovery: true, Default: "RFC3720"},
	"iSCSIProtocolLevel":       {Kind: KeyMin, LeadingOnly: true, Min: 0, Max: 31, Default: "0"},
	"IFMarker":                 {Kind: KeyObsolete},
	"OFMarker":                 {Kind: KeyObsolete},
	"IFMarkInt":                {Kind: KeyObsolete},
	"OFMarkInt":                {Kind: KeyObsolete},
}

// LookupKey returns how RFC 7143 defines the key name, and whether it
// defines it.
func LookupKey(name string) (Key, bool) {
	k, ok := keys[name]
	return k, ok
}
