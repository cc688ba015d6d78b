package peers

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// Target is one target as listed by `tgtadm --lld iscsi --op show --mode
// target`.
type Target struct {
	// Tid is the target id.
	Tid int
	// IQN is the target name.
	IQN string
	// State is the target state from its system information ("ready",
	// "offline").
	State string
	// Nexuses are tgtd's view of the sessions logged in to the target.
	Nexuses []Nexus
	// LUNs are the target's logical units, LUN 0 being tgtd's controller.
	LUNs []LUN
	// Accounts are the CHAP accounts bound to the target.
	Accounts []Account
	// ACLs are the initiator addresses or names allowed to log in ("ALL").
	ACLs []string
}

// Nexus is one I_T nexus (an iSCSI session) of a target as tgtd reports it.
type Nexus struct {
	// ID is tgtd's I_T nexus id.
	ID uint64
	// Initiator is the initiator's iSCSI name.
	Initiator string
	// Alias is the initiator alias, "none" when the initiator sent none.
	Alias string
	// Connections are the session's TCP connections.
	Connections []NexusConn
}

// NexusConn is one connection of an I_T nexus.
type NexusConn struct {
	// CID is the connection id.
	CID int
	// IP is the initiator's IP address.
	IP string
}

// LUN is one logical unit of a target.
type LUN struct {
	// LUN is the logical unit number.
	LUN int
	// Type is the device type ("disk", "controller").
	Type string
	// BackingStorePath is the backing file, "None" for the controller.
	BackingStorePath string
	// Props holds every "Key: value" line of the logical unit.
	Props map[string]string
}

// Account is a CHAP account bound to a target.
type Account struct {
	// User is the account name.
	User string
	// Outgoing marks the account the target uses to authenticate itself
	// (mutual CHAP).
	Outgoing bool
}

// ParseTargets parses the output of `tgtadm --lld iscsi --op show --mode
// target` into its targets. Lines it does not recognise are ignored.
func ParseTargets(out string) ([]Target, error) {
	var (
		targets []Target
		tgt     *Target
		section string
		nexus   *Nexus
		lun     *LUN
	)
	sc := bufio.NewScanner(strings.NewReader(out))
	lineNo := 0
	for sc.Scan() {
		lineNo++
		raw := sc.Text()
		line := strings.TrimSpace(raw)
		if line == "" {
			continue
		}
		bad := func(err error) error {
			return fmt.Errorf("peers: tgtadm show line %d %q: %w", lineNo, raw, err)
		}
		if raw[0] != ' ' && raw[0] != '\t' {
			rest, ok := strings.CutPrefix(line, "Target ")
			if !ok {
				return nil, bad(fmt.Errorf("expected \"Target N: IQN\""))
			}
			idStr, iqn, ok := strings.Cut(rest, ":")
			if !ok {
				return nil, bad(fmt.Errorf("expected \"Target N: IQN\""))
			}
			tid, err := strconv.Atoi(idStr)
			if err != nil {
				return nil, bad(err)
			}
			targets = append(targets, Target{Tid: tid, IQN: strings.TrimSpace(iqn)})
			tgt = &targets[len(targets)-1]
			section, nexus, lun = "", nil, nil
			continue
		}
		if tgt == nil {
			return nil, bad(fmt.Errorf("indented line before any target"))
		}
		switch line {
		case "System information:", "I_T nexus information:", "LUN information:",
			"Account information:", "ACL information:":
			section, nexus, lun = line, nil, nil
			continue
		}
		key, val, hasColon := strings.Cut(line, ":")
		val = strings.TrimSpace(val)
		switch section {
		case "System information:":
			if hasColon && key == "State" {
				tgt.State = val
			}
		case "I_T nexus information:":
			if !hasColon {
				continue
			}
			switch key {
			case "I_T nexus":
				id, err := strconv.ParseUint(val, 10, 64)
				if err != nil {
					return nil, bad(err)
				}
				tgt.Nexuses = append(tgt.Nexuses, Nexus{ID: id})
				nexus = &tgt.Nexuses[len(tgt.Nexuses)-1]
			case "Initiator":
				if nexus == nil {
					return nil, bad(fmt.Errorf("initiator outside an I_T nexus"))
				}
				name, alias, _ := strings.Cut(val, " alias: ")
				nexus.Initiator = strings.TrimSpace(name)
				nexus.Alias = strings.TrimSpace(alias)
			case "Connection":
				if nexus == nil {
					return nil, bad(fmt.Errorf("connection outside an I_T nexus"))
				}
				cid, err := strconv.Atoi(val)
				if err != nil {
					return nil, bad(err)
				}
				nexus.Connections = append(nexus.Connections, NexusConn{CID: cid})
			case "IP Address":
				if nexus == nil || len(nexus.Connections) == 0 {
					return nil, bad(fmt.Errorf("IP address outside a connection"))
				}
				nexus.Connections[len(nexus.Connections)-1].IP = val
			}
		case "LUN information:":
			if !hasColon {
				continue
			}
			if key == "LUN" {
				n, err := strconv.Atoi(val)
				if err != nil {
					return nil, bad(err)
				}
				tgt.LUNs = append(tgt.LUNs, LUN{LUN: n, Props: map[string]string{}})
				lun = &tgt.LUNs[len(tgt.LUNs)-1]
				continue
			}
			if lun == nil {
				return nil, bad(fmt.Errorf("property outside a LUN"))
			}
			lun.Props[key] = val
			switch key {
			case "Type":
				lun.Type = val
			case "Backing store path":
				lun.BackingStorePath = val
			}
		case "Account information:":
			user, out := strings.CutSuffix(line, " (outgoing)")
			tgt.Accounts = append(tgt.Accounts, Account{User: user, Outgoing: out})
		case "ACL information:":
			tgt.ACLs = append(tgt.ACLs, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("peers: tgtadm show: %w", err)
	}
	return targets, nil
}

// ParseParams parses the output of `tgtadm --lld iscsi --op show --mode
// target --tid N`, one "Name=Value" line per iSCSI parameter.
func ParseParams(out string) map[string]string {
	params := map[string]string{}
	for line := range strings.Lines(out) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok {
			params[k] = v
		}
	}
	return params
}
