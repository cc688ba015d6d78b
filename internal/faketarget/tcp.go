package faketarget

import (
	"context"
	"net"
	"time"
)

// TCPServer is a Server over loopback TCP rather than net.Pipe: on a TCP
// connection the initiator reads responses in the command's own goroutine,
// a target can reset the connection (Reset), and a target that stops
// reading (StopReading) fills the socket buffers until the initiator's
// writes block, as a zero window does.
type TCPServer struct {
	*Server
	// Buffer, when set before Dial, is the socket buffer size of both ends
	// (the initiator's send buffer and the target's receive buffer), so
	// that a target that stops reading blocks the initiator with little
	// data in flight.
	Buffer int
}

// NewTCPServer is NewServer over loopback TCP; the test's cleanup closes it.
func NewTCPServer(t TB, tm Timing, o Login) *TCPServer {
	return &TCPServer{Server: NewServer(t, tm, o)}
}

// Dial returns the initiator's end of a loopback TCP connection whose other
// end serves a login.
func (srv *TCPServer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ini, tgt, err := TCPPair(ctx)
	if err != nil {
		return nil, err
	}
	if srv.Buffer > 0 {
		ini.SetWriteBuffer(srv.Buffer)
		tgt.SetReadBuffer(srv.Buffer)
	}
	f := New(srv.t, NewStallConn(tgt), srv.tm)
	srv.mu.Lock()
	srv.targets = append(srv.targets, f)
	o := srv.login
	srv.mu.Unlock()
	go func() { srv.ready <- ready{f, f.ServeLogin(o)} }()
	return ini, nil
}

// TCPPair returns both ends of a new loopback TCP connection.
func TCPPair(ctx context.Context) (ini, tgt *net.TCPConn, err error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		acc <- accepted{c, err}
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		<-acc
		return nil, nil, err
	}
	a := <-acc
	if a.err != nil {
		c.Close()
		return nil, nil, a.err
	}
	return c.(*net.TCPConn), a.c.(*net.TCPConn), nil
}

// tcp returns the target's TCP connection, failing the test on a pipe.
func (f *Target) tcp() *net.TCPConn {
	f.t.Helper()
	nc := f.nc
	if s, ok := nc.(*StallConn); ok {
		nc = s.Inner()
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		f.t.Fatalf("fake target: %T is not a TCP connection", f.nc)
	}
	return tc
}

// Reset closes the connection with a TCP RST rather than a FIN (SO_LINGER
// 0); the target must be on TCP (TCPServer).
func (f *Target) Reset() {
	f.t.Helper()
	if err := f.tcp().SetLinger(0); err != nil {
		f.t.Fatalf("fake target: SO_LINGER 0: %v", err)
	}
	f.Close()
}

// StopReading makes the target read nothing more from the connection, as a
// target whose window stays at zero: what the initiator sends piles up in
// the socket buffers (net.Pipe: the initiator's next write blocks). The
// target can still send. It needs a connection wrapped in a StallConn, as
// TCPServer makes them.
func (f *Target) StopReading() *StallConn {
	f.t.Helper()
	s, ok := f.nc.(*StallConn)
	if !ok {
		f.t.Fatalf("fake target: StopReading needs a StallConn, not %T", f.nc)
	}
	s.StallReads()
	return s
}
