// Package iscsitest runs an in-memory iSCSI target (RFC 7143) on the loopback
// interface or over net.Pipe, for testing initiators the way net/http/httptest
// tests HTTP clients. Its Hook injects the faults a real target will not
// produce on demand: chosen logout responses, silence, resets, rejects and
// unsolicited PDUs.
package iscsitest

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/goiscsi/iscsi/pdu"
)

// DefaultName is the target name used when Config.Name is empty.
const DefaultName = "iqn.2026-11.org.goiscsi:test"

// BlockSize is the logical block size of every LUN.
const BlockSize = 512

// Config says what a Target offers and enforces. Zero fields take the
// defaults documented on each.
type Config struct {
	// Name is the target's iSCSI name; default DefaultName.
	Name string
	// LUNs holds the size in bytes of LUN 0, 1, ...; each is memory backed
	// (sparse) and rounded down to BlockSize. Default: one 64 MiB LUN.
	LUNs []int64
	// CHAP requires CHAP authentication; nil logs in with AuthMethod=None.
	CHAP *CHAP
	// CHAPAlgorithms lists the CHAP_A values the target accepts, from 5 (MD5),
	// 6 (SHA-1), 7 (SHA-256) and 8 (SHA3-256); default [5].
	CHAPAlgorithms []int
	// MaxConnections is the most connections per session; default 4.
	MaxConnections int
	// ErrorRecoveryLevel is the highest level the target accepts
	// (negotiated by minimum); default 0. At 1 or more it keeps what it
	// sent for resending and answers SNACKs (snack.go); at 2 it also does
	// connection recovery: Logout reason 2, connection reinstatement and
	// TASK REASSIGN (erl2.go).
	ErrorRecoveryLevel int

	// MaxRecvDataSegmentLength is what the target declares and enforces on
	// received PDUs; default 8192.
	MaxRecvDataSegmentLength int
	// FirstBurstLength is the target's value (negotiated by minimum);
	// default 65536.
	FirstBurstLength int
	// MaxBurstLength is the target's value (minimum); default 262144.
	MaxBurstLength int
	// InitialR2T is the target's value (negotiated by OR): false lets the
	// initiator send unsolicited Data-Out when it asks for it too.
	InitialR2T bool
	// ImmediateData is the target's value (negotiated by AND): false forbids
	// immediate data whatever the initiator asks.
	ImmediateData bool
	// MaxOutstandingR2T is the target's value (minimum); default 1.
	MaxOutstandingR2T int
	// QueueDepth is the size of the CmdSN window: MaxCmdSN = ExpCmdSN +
	// QueueDepth - 1. Default 32.
	QueueDepth int
	// HeaderDigests and DataDigests are the digests the target accepts, from
	// "None" and "CRC32C"; default both. Without "None" the target insists.
	HeaderDigests, DataDigests []string

	// SeparateReadStatus sends a SCSI Response after the Data-In PDUs of a
	// read instead of carrying the status in the last Data-In (S bit), which
	// is what tgtd does.
	SeparateReadStatus bool
	// UnitAttentionOnLogin makes the first command of every new session on
	// each LUN (but INQUIRY, REPORT LUNS, REQUEST SENSE) end in CHECK
	// CONDITION, UNIT ATTENTION, POWER ON OR RESET OCCURRED, as tgtd and LIO do.
	UnitAttentionOnLogin bool
	// MaxTransferLength is the largest data transfer of one command, in
	// bytes (reported in the Block Limits VPD page); default 8 MiB.
	MaxTransferLength int
	// NopInInterval, if positive, makes the target ping every connection in
	// full feature phase with a NOP-In at that interval; a connection that
	// does not answer within NopInTimeout (default 5 s) is dropped.
	NopInInterval time.Duration
	NopInTimeout  time.Duration
	// LoginTimeout bounds the whole login phase of a connection; default 15 s.
	LoginTimeout time.Duration
	// WriteTimeout bounds every write to a connection; default 10 s.
	WriteTimeout time.Duration
	// InitialStatSN is the first StatSN of every connection; 0 picks a
	// random one, so initiators cannot assume it.
	InitialStatSN uint32
	// DefaultTime2Wait and DefaultTime2Retain, when set, are the target's
	// values of those keys in seconds (0 to 3600); nil means RFC 7143's
	// defaults, 2 and 20. Time2Wait is negotiated by maximum and
	// Time2Retain by minimum, so 0 lets an initiator that offers 0
	// reconnect at once, and Time2Retain bounds how long the target keeps
	// a session whose connections failed (a pointer, since 0 is a value).
	DefaultTime2Wait, DefaultTime2Retain *int

	// Hook, if set, sees every PDU the target receives before the target
	// handles it and may replace the handling.
	Hook Hook
	// DigestFault, if set, sees every PDU the target sends in full feature
	// phase, resends included, and may corrupt its digests (hook.go).
	DigestFault DigestFault
	// Logger receives the target's log; default none.
	Logger *zap.Logger
}

// CHAP holds the secrets of CHAP authentication. The initiator authenticates
// with User and Secret; when MutualUser is set the initiator must also
// challenge the target, which answers with MutualUser and MutualSecret.
type CHAP struct {
	User, Secret             string
	MutualUser, MutualSecret string
}

// Target is an in-memory iSCSI target.
type Target struct {
	// Config is the configuration; it may be changed between
	// NewUnstartedTarget and Start, not after.
	Config Config

	ln   net.Listener
	log  *zap.Logger
	luns []*lun
	wg   sync.WaitGroup
	done chan struct{}

	mu       sync.Mutex
	started  bool
	closed   bool
	conns    map[*Conn]struct{}
	sessions map[uint16]*session
	// byISID indexes the live sessions by ISID, for the reinstatement
	// check of each leading login: a scan of every session would make a
	// login cost O(sessions).
	byISID   map[[6]byte][]*session
	ended    []*session
	nextTSIH uint16
	stats    Stats
}

// maxEnded bounds how many ended sessions Sessions keeps reporting.
const maxEnded = 1024

// NewTarget returns a started Target listening on 127.0.0.1 on a free port.
func NewTarget(cfg Config) *Target {
	t := NewUnstartedTarget(cfg)
	t.Start()
	return t
}

// NewUnstartedTarget returns a Target listening on 127.0.0.1 on a free port
// that accepts no connection until Start.
func NewUnstartedTarget(cfg Config) *Target {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("iscsitest: failed to listen on a port: %v", err))
	}
	return &Target{
		Config:   cfg,
		ln:       ln,
		done:     make(chan struct{}),
		conns:    make(map[*Conn]struct{}),
		sessions: make(map[uint16]*session),
		byISID:   make(map[[6]byte][]*session),
		nextTSIH: 1,
		stats:    newStats(),
	}
}

// Start applies the configuration's defaults and starts accepting
// connections. It panics on an invalid configuration or a second call.
func (t *Target) Start() {
	t.mu.Lock()
	if t.started {
		t.mu.Unlock()
		panic("iscsitest: Target started twice")
	}
	t.started = true
	t.mu.Unlock()
	t.Config = withDefaults(t.Config)
	t.log = t.Config.Logger
	for _, size := range t.Config.LUNs {
		t.luns = append(t.luns, newLUN(size))
	}
	t.wg.Add(1)
	go t.accept()
}

func withDefaults(c Config) Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.Name == "" {
		c.Name = DefaultName
	}
	if len(c.LUNs) == 0 {
		c.LUNs = []int64{64 << 20}
	}
	if len(c.CHAPAlgorithms) == 0 {
		c.CHAPAlgorithms = []int{pdu.CHAPMD5}
	}
	for _, a := range c.CHAPAlgorithms {
		if pdu.CHAPSize(a) == 0 {
			panic(fmt.Sprintf("iscsitest: unsupported CHAP algorithm %d", a))
		}
	}
	if c.CHAP != nil {
		if c.CHAP.User == "" || c.CHAP.Secret == "" {
			panic("iscsitest: CHAP needs User and Secret")
		}
		if c.CHAP.MutualUser != "" && c.CHAP.MutualSecret == c.CHAP.Secret {
			panic("iscsitest: CHAP secrets of the two directions must differ (RFC 7143 §12.1.3)")
		}
	}
	def(&c.MaxConnections, 4)
	c.MaxConnections = min(c.MaxConnections, 65535)
	def(&c.MaxRecvDataSegmentLength, pdu.DefaultMaxRecvDataSegmentLength)
	def(&c.FirstBurstLength, 65536)
	def(&c.MaxBurstLength, 262144)
	def(&c.MaxOutstandingR2T, 1)
	def(&c.QueueDepth, 32)
	c.ErrorRecoveryLevel = min(max(c.ErrorRecoveryLevel, 0), 2)
	def(&c.MaxTransferLength, 8<<20)
	c.MaxRecvDataSegmentLength = min(max(c.MaxRecvDataSegmentLength, 512), pdu.MaxDataSegmentLength)
	c.MaxBurstLength = min(max(c.MaxBurstLength, 512), pdu.MaxDataSegmentLength)
	c.FirstBurstLength = min(max(c.FirstBurstLength, 512), c.MaxBurstLength)
	c.MaxOutstandingR2T = min(c.MaxOutstandingR2T, 65535)
	c.QueueDepth = min(c.QueueDepth, 1<<20)
	c.MaxTransferLength = max(c.MaxTransferLength/BlockSize, 1) * BlockSize
	if len(c.HeaderDigests) == 0 {
		c.HeaderDigests = []string{"None", "CRC32C"}
	}
	if len(c.DataDigests) == 0 {
		c.DataDigests = []string{"None", "CRC32C"}
	}
	for _, d := range slices.Concat(c.HeaderDigests, c.DataDigests) {
		if d != "None" && d != "CRC32C" {
			panic(fmt.Sprintf("iscsitest: unknown digest %q", d))
		}
	}
	for _, v := range []*int{c.DefaultTime2Wait, c.DefaultTime2Retain} {
		if v != nil && (*v < 0 || *v > 3600) {
			panic(fmt.Sprintf("iscsitest: DefaultTime2Wait/DefaultTime2Retain %d out of 0..3600", *v))
		}
	}
	if c.NopInTimeout <= 0 {
		c.NopInTimeout = 5 * time.Second
	}
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = 15 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.InitialStatSN == 0 {
		var b [4]byte
		rand.Read(b[:])
		c.InitialStatSN = binary.BigEndian.Uint32(b[:]) | 1
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

func (t *Target) accept() {
	defer t.wg.Done()
	for {
		nc, err := t.ln.Accept()
		if err != nil {
			select {
			case <-t.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			t.log.Warn("accept failed", zap.Error(err))
			return
		}
		t.serve(nc)
	}
}

// serve starts the goroutines of a new connection, unless the target is closed.
func (t *Target) serve(nc net.Conn) *Conn {
	c := newConn(t, nc)
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		nc.Close()
		return nil
	}
	t.conns[c] = struct{}{}
	t.wg.Add(2)
	t.mu.Unlock()
	go c.writeLoop()
	go c.readLoop()
	return c
}

// Addr returns the address the target listens on, "127.0.0.1:port".
func (t *Target) Addr() string { return t.ln.Addr().String() }

// Pipe returns the initiator's end of a net.Pipe whose other end the target
// serves as it would a TCP connection. The target must be started.
func (t *Target) Pipe() net.Conn {
	t.mu.Lock()
	started := t.started
	t.mu.Unlock()
	if !started {
		panic("iscsitest: Pipe on a Target not started")
	}
	client, server := net.Pipe()
	if t.serve(server) == nil {
		client.Close()
	}
	return client
}

// Close stops listening, closes every connection at once and waits for
// every goroutine of the target to end.
func (t *Target) Close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.wg.Wait()
		return
	}
	t.closed = true
	close(t.done)
	conns := make([]*Conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	t.ln.Close()
	for _, c := range conns {
		c.abort()
	}
	for _, s := range t.liveSessions() {
		s.mu.Lock()
		if s.retain != nil {
			s.retain.Stop()
		}
		s.mu.Unlock()
	}
	t.wg.Wait()
}

// track registers a goroutine started outside the target's own (a timer's)
// for Close to wait for; it reports false once the target is closed.
func (t *Target) track() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

// forget removes a finished connection from the target.
func (t *Target) forget(c *Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// SessionInfo is the target's own view of one session.
type SessionInfo struct {
	TSIH          uint16
	ISID          [6]byte
	InitiatorName string
	TargetName    string // empty for a discovery session without one
	Discovery     bool
	// CIDs lists the connections in full feature phase, in ascending order.
	CIDs  []uint16
	Conns []ConnInfo
	// LoggedOut reports a session ended by a Logout Request: reason 0, or
	// reason 1 on its last connection.
	LoggedOut bool
	// Failed reports a session that lost its last connection without a
	// logout: the target keeps it for DefaultTime2Retain seconds, for a
	// connection to continue it (by TSIH) or reinstate it (by ISID), then
	// it ends (RFC 7143 §6.3.5).
	Failed bool
	// Ended reports a session that can take no more commands or
	// connections: logged out, reinstated, or failed for longer than
	// DefaultTime2Retain (at once with 0).
	Ended bool
	// Params are the negotiated session-wide parameters.
	Params Params
}

// ConnInfo is the target's view of one connection of a session.
type ConnInfo struct {
	CID          uint16
	RemoteAddr   string
	HeaderDigest bool
	DataDigest   bool
	// MaxRecvDataSegmentLength is the initiator's declared value, the
	// largest data segment the target sends it.
	MaxRecvDataSegmentLength int
}

// Params are the negotiated session-wide operational parameters
// (RFC 7143 §13).
type Params struct {
	MaxConnections      int
	InitialR2T          bool
	ImmediateData       bool
	MaxBurstLength      int
	FirstBurstLength    int
	DefaultTime2Wait    int
	DefaultTime2Retain  int
	MaxOutstandingR2T   int
	DataPDUInOrder      bool
	DataSequenceInOrder bool
	ErrorRecoveryLevel  int
}

// Sessions returns every session the target has, live ones first, then the
// most recent ended ones, each in order of creation.
func (t *Target) Sessions() []SessionInfo {
	t.mu.Lock()
	live := make([]*session, 0, len(t.sessions))
	for _, s := range t.sessions {
		live = append(live, s)
	}
	ended := slices.Clone(t.ended)
	t.mu.Unlock()
	slices.SortFunc(live, func(a, b *session) int { return int(a.seq - b.seq) })
	out := make([]SessionInfo, 0, len(live)+len(ended))
	for _, s := range live {
		out = append(out, s.info())
	}
	for _, s := range ended {
		out = append(out, s.info())
	}
	return out
}

// Conn returns the live connection CID of session TSIH, or nil.
func (t *Target) Conn(tsih, cid uint16) *Conn {
	t.mu.Lock()
	s := t.sessions[tsih]
	t.mu.Unlock()
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[cid]
}

// LUNData returns a copy of the bytes of LUN lun, or nil if there is none.
func (t *Target) LUNData(lun int) []byte {
	if lun < 0 || lun >= len(t.luns) {
		return nil
	}
	return t.luns[lun].snapshot()
}

// SendAsync sends an Asynchronous Message on connection cid of session tsih,
// with data as its data segment (sense data, then iSCSI event data). The
// target fills ITT (0xffffffff), StatSN, ExpCmdSN and MaxCmdSN; it returns
// once the PDU is written.
func (t *Target) SendAsync(tsih, cid uint16, msg pdu.AsyncMessage, data []byte) error {
	c := t.Conn(tsih, cid)
	if c == nil {
		return fmt.Errorf("iscsitest: no connection %d in session %#x", cid, tsih)
	}
	msg.ITT = pdu.ReservedTag
	return c.Send(&msg, data)
}

// session registry

// newSession registers a session for a leading login that reached full
// feature phase and returns it with a fresh TSIH. A live session of the same
// initiator, ISID and target is reinstated: closed and replaced (§6.3.5).
func (t *Target) newSession(l *login) *session {
	t.mu.Lock()
	var old *session
	for _, s := range t.byISID[l.isid] {
		if strings.EqualFold(s.initiatorName, l.initiatorName) &&
			s.discovery == l.discovery && strings.EqualFold(s.targetName, l.targetName) {
			old = s
		}
	}
	for t.nextTSIH == 0 || t.sessions[t.nextTSIH] != nil {
		t.nextTSIH++
	}
	s := newSession(t, l, t.nextTSIH)
	t.nextTSIH++
	t.sessions[s.tsih] = s
	t.byISID[s.isid] = append(t.byISID[s.isid], s)
	t.mu.Unlock()
	if old != nil {
		t.log.Debug("session reinstatement", zap.Uint16("old_tsih", old.tsih), zap.Uint16("tsih", s.tsih))
		old.end(false)
	}
	return s
}

// lookupSession returns the live session tsih.
func (t *Target) lookupSession(tsih uint16) *session {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sessions[tsih]
}

// retire moves an ended session to the ended list.
func (t *Target) retire(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sessions[s.tsih] != s {
		return
	}
	delete(t.sessions, s.tsih)
	if same := slices.DeleteFunc(t.byISID[s.isid], func(o *session) bool { return o == s }); len(same) > 0 {
		t.byISID[s.isid] = same
	} else {
		delete(t.byISID, s.isid)
	}
	t.ended = append(t.ended, s)
	if len(t.ended) > maxEnded {
		t.ended = slices.Delete(t.ended, 0, len(t.ended)-maxEnded)
	}
}

// liveSessions returns the sessions in full feature phase.
func (t *Target) liveSessions() []*session {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*session, 0, len(t.sessions))
	for _, s := range t.sessions {
		out = append(out, s)
	}
	return out
}

func (t *Target) lun(n int) *lun {
	if n < 0 || n >= len(t.luns) {
		return nil
	}
	return t.luns[n]
}

// portal returns the TargetAddress value of the target's only portal.
func (t *Target) portal() string { return t.Addr() + ",1" }
