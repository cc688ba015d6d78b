package session

import (
	"context"
	"fmt"

	"github.com/goiscsi/iscsi/pdu"
)

// maxSendTargets bounds the text of a SendTargets answer gathered over
// Continue PDUs.
const maxSendTargets = 1 << 20

// maxEmptyText bounds the Text Responses in a row that say more follows but
// carry no text.
const maxEmptyText = 8

// DiscoveredTarget is one target a SendTargets answer named, with its portals
// ("host:port,tpgt" as the target wrote them).
type DiscoveredTarget struct {
	Name    string
	Portals []string
}

// Addresses returns the target's portals as dialable host:port addresses.
func (t DiscoveredTarget) Addresses() []string {
	out := make([]string, len(t.Portals))
	for i, p := range t.Portals {
		out[i] = portalAddr(p)
	}
	return out
}

// Discover opens a discovery session to cfg.Portal, asks SendTargets=All,
// logs out and returns the targets. cfg.TargetName is ignored.
func Discover(ctx context.Context, cfg Config) ([]DiscoveredTarget, error) {
	cfg.TargetName = ""
	s, err := Login(ctx, cfg)
	if err != nil {
		return nil, err
	}
	targets, err := s.SendTargets(ctx, "All")
	_, lerr := s.Logout(ctx, LogoutOptions{Timeout: 5e9})
	if err != nil {
		return nil, err
	}
	if lerr != nil {
		s.log.Debug("discovery logout failed: " + lerr.Error())
	}
	return targets, nil
}

// SendTargets asks the target for the targets it knows ("All", or a name).
func (s *Session) SendTargets(ctx context.Context, what string) ([]DiscoveredTarget, error) {
	c, err := s.pickConn()
	if err != nil {
		return nil, err
	}
	data := pdu.AppendText(nil, kv("SendTargets", what))
	ttt := pdu.ReservedTag
	var text []byte
	empty := 0
	// Every request of one text exchange carries the same tag (RFC 7143
	// §11.10.4).
	itt := s.newTask(taskText).itt
	for {
		t := &task{itt: itt, kind: taskText, done: make(chan struct{})}
		if err := c.register(t, false); err != nil {
			return nil, err
		}
		if err := c.sendText(ctx, t, ttt, data); err != nil {
			c.remove(t.itt)
			return nil, err
		}
		select {
		case <-t.done:
		case <-ctx.Done():
			c.remove(t.itt)
			return nil, ctx.Err()
		}
		if t.err != nil {
			return nil, t.err
		}
		if len(text)+len(t.text) > maxSendTargets {
			return nil, &pdu.ProtocolError{Op: pdu.OpTextResponse, Field: "DataSegmentLength", Value: uint64(len(text) + len(t.text)),
				Reason: fmt.Sprintf("SendTargets answer over %d bytes", maxSendTargets)}
		}
		text = append(text, t.text...)
		if t.textResp.Final {
			break
		}
		// A target that says more follows must name the exchange
		// (RFC 7143 §11.11.4) and send some of it: answers that carry
		// nothing would keep the exchange going until ctx ends.
		if t.textResp.TTT == pdu.ReservedTag {
			return nil, &pdu.ProtocolError{Op: pdu.OpTextResponse, Field: "TargetTransferTag", Value: uint64(pdu.ReservedTag),
				Reason: "a Text Response with F=0 must carry a tag for the next request"}
		}
		if len(t.text) == 0 {
			if empty++; empty > maxEmptyText {
				return nil, &pdu.ProtocolError{Op: pdu.OpTextResponse, Field: "DataSegmentLength", Value: 0,
					Reason: fmt.Sprintf("%d Text Responses in a row with F=0 and no text", empty)}
			}
		} else {
			empty = 0
		}
		// More follows: ask with an empty request carrying the target's TTT.
		ttt, data = t.textResp.TTT, nil
	}
	kvs, err := pdu.ParseText(text, pdu.TextLimits{MaxPairs: 1 << 16, AllowDuplicates: true})
	if err != nil {
		return nil, err
	}
	var out []DiscoveredTarget
	for i, p := range kvs {
		switch p.Key {
		case "TargetName":
			out = append(out, DiscoveredTarget{Name: p.Value})
		case "TargetAddress":
			if len(out) == 0 {
				// Typed, like every error a target's bytes cause; the value
				// is the pair's index in the answer.
				return nil, &pdu.ProtocolError{Op: pdu.OpTextResponse, Field: "TargetAddress", Value: uint64(i),
					Reason: "SendTargets answer gives an address (pair number shown) before any TargetName"}
			}
			out[len(out)-1].Portals = append(out[len(out)-1].Portals, p.Value)
		}
	}
	return out, nil
}

// sendText sends a Text Request for t, waiting for room in the CmdSN window.
func (c *Conn) sendText(ctx context.Context, t *task, ttt uint32, data []byte) error {
	s := c.s
	for {
		c.wmu.Lock()
		if st := c.state(); st >= connLogoutSent {
			c.wmu.Unlock()
			if st == connClosed {
				return fmt.Errorf("%w: the connection has ended: %w", ErrNotSent, c.Err())
			}
			return errLoggingOut
		}
		sn, wait, ok := s.takeCmdSN()
		if ok {
			req := &pdu.TextRequest{Final: true, ITT: t.itt, TTT: ttt, CmdSN: sn, ExpStatSN: c.expStatSN.Load()}
			t.setRequest(sn)
			stop := c.watchWrite(ctx, req.Opcode())
			err := c.sendLocked(req, data)
			c.wmu.Unlock()
			stop()
			return err
		}
		c.wmu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return fmt.Errorf("iscsi: text request not sent, CmdSN window closed: %w", ctx.Err())
		case <-c.closing:
			return c.Err()
		}
	}
}
