package main

import (
	"context"
	"fmt"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/spf13/pflag"
)

// agentSessionJSON is a session of the agent as `sessions --json` prints
// it: the API's api.Session with the identifiers in the CLI's notation.
type agentSessionJSON struct {
	Target      string         `json:"target"`
	Portal      string         `json:"portal"`
	TSIH        hexTSIH        `json:"tsih"`
	ISID        string         `json:"isid"`
	Connections []hexCID       `json:"connections"`
	State       string         `json:"state"`
	Params      map[string]any `json:"params"`
	Counters    api.Counters   `json:"counters"`
	Node        string         `json:"node,omitempty"`
	LoggedInAt  string         `json:"loggedInAt"`
	Recovery    api.Recovery   `json:"recovery"`
}

// runSessions lists the sessions the agent holds.
func defSessions(a *app, fs *pflag.FlagSet) runFunc {
	af := &agentFlags{}
	fs.StringVar(&af.socket, "socket", "", "the agent's Unix `socket` (default $"+envSocket+", else "+defaultSocket()+")")
	target := fs.StringP("target", "t", "", "only the sessions of this target `name`")
	params := fs.Bool("params", false, "print every session's negotiated parameters")
	return func(ctx context.Context, _ []string) error { return runSessions(ctx, a, af, target, params) }
}

func runSessions(ctx context.Context, a *app, af *agentFlags, target *string, params *bool) error {
	if *target != "" {
		n, err := initiator.NormalizeName(*target)
		if err != nil {
			return err
		}
		*target = n
	}
	c, err := af.mustClient(ctx, a)
	if err != nil {
		return err
	}
	var resp api.Sessions
	if err := c.do(ctx, http.MethodGet, "/v1/sessions", nil, &resp); err != nil {
		return cliError(err, nil, false)
	}
	list := []api.Session{}
	for _, s := range resp.Sessions {
		if *target == "" || s.Target == *target {
			list = append(list, s)
		}
	}
	if a.json {
		out := make([]agentSessionJSON, len(list))
		for i, s := range list {
			out[i] = agentSessionJSON{Target: s.Target, Portal: s.Portal, TSIH: hexTSIH(s.TSIH), ISID: isidFrom12(s.ISID),
				Connections: cidList(s.Connections), State: s.State, Params: s.Params, Counters: s.Counters, Node: s.Node, LoggedInAt: s.LoggedInAt,
				Recovery: s.Recovery}
		}
		a.printJSON(map[string]any{"command": "sessions", "apiVersion": resp.APIVersion, "agent": c.socket, "sessionCount": len(out), "sessions": out})
		return nil
	}
	if len(list) == 0 {
		a.printf("The agent at %s holds no session\n", c.socket)
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tPORTAL\tTSIH\tISID\tCIDS\tSTATE\tSENT\tRECEIVED\tNODE")
	for _, s := range list {
		sent, recv := "-", "-"
		if s.Counters.Measured {
			sent, recv = humanBytes(s.Counters.BytesSent), humanBytes(s.Counters.BytesReceived)
		}
		node := s.Node
		if node == "" {
			node = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t0x%04x\t%s\t%v\t%s\t%s\t%s\t%s\n", safe(s.Target), safe(s.Portal), s.TSIH, isidFrom12(s.ISID),
			s.Connections, stateWithRecovery(s.State, s.Recovery, time.Now()), sent, recv, safe(node))
	}
	tw.Flush()
	if *params {
		for _, s := range list {
			a.printf("\n%s TSIH 0x%04x:", safe(s.Target), s.TSIH)
			printParams(a, s.Params)
		}
	}
	return nil
}

// stateWithRecovery is a session's state as the table prints it: a
// recovering session with its attempts and when the next one starts, a
// failed or lost one with until when the target may keep it.
func stateWithRecovery(state string, r api.Recovery, now time.Time) string {
	at := func(s string) (time.Time, bool) {
		t, err := time.Parse(time.RFC3339Nano, s)
		return t, err == nil
	}
	switch state {
	case "recovering":
		out := fmt.Sprintf("recovering (attempt %d", r.Attempts)
		if t, ok := at(r.NextTry); ok {
			out += fmt.Sprintf(", next in %v", max(t.Sub(now), 0).Round(100*time.Millisecond))
		}
		return out + ")"
	case "failed", "lost":
		if t, ok := at(r.RetainUntil); ok && t.After(now) {
			return fmt.Sprintf("%s (the target may keep it %v more)", state, t.Sub(now).Round(time.Second))
		}
	}
	return state
}
