package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/goiscsi/iscsi/initiator"
)

// etcInitiatorName is open-iscsi's file of the host's initiator name.
const etcInitiatorName = "/etc/iscsi/initiatorname.iscsi"

// machineIDFile is systemd's machine id.
const machineIDFile = "/etc/machine-id"

// initiatorNameFile is the name iscsictl derived, kept in the state
// directory.
const initiatorNameFile = "initiatorname"

// derivedNamePrefix starts the names iscsictl derives; the rest is 12 hex
// digits of a hash of the machine id (or random ones without a machine id).
const derivedNamePrefix = "iqn.2026-01.org.goiscsi:"

// hostInitiatorName returns the initiator name of this host: InitiatorName=
// of /etc/iscsi/initiatorname.iscsi when the file is there (the name
// open-iscsi uses, so that the target's ACLs apply to both), else the name
// kept in stateDir, else one derived from /etc/machine-id (random without
// one) and kept there. Two hosts never share a default name, and one host
// keeps its own.
func hostInitiatorName(stateDir string) (string, error) {
	return hostInitiatorNameFrom(etcInitiatorName, machineIDFile, stateDir)
}

func hostInitiatorNameFrom(etcFile, machineID, stateDir string) (string, error) {
	name, err := readInitiatorNameFile(etcFile)
	if err != nil || name != "" {
		return name, err
	}
	kept := filepath.Join(stateDir, initiatorNameFile)
	if name, err := readInitiatorNameFile(kept); err != nil || name != "" {
		return name, err
	}
	var seed []byte
	if b, err := os.ReadFile(machineID); err == nil && len(bytes.TrimSpace(b)) > 0 {
		// The hash, not the id: machine-id(5) asks that the id itself not
		// be shown to the network.
		seed = append([]byte("iscsictl initiator name\x00"), bytes.TrimSpace(b)...)
	} else {
		seed = make([]byte, 16)
		rand.Read(seed)
	}
	sum := sha256.Sum256(seed)
	name = derivedNamePrefix + hex.EncodeToString(sum[:6])
	// Kept, so that the name stays if the machine id is re-made (a cloned
	// image); a state directory that cannot be written (a user without
	// root, /var/lib) still gets the same derived name next time.
	if err := os.MkdirAll(stateDir, 0o755); err == nil {
		tmp := kept + ".tmp"
		if err := os.WriteFile(tmp, []byte("InitiatorName="+name+"\n"), 0o644); err == nil {
			if err := os.Rename(tmp, kept); err != nil {
				os.Remove(tmp)
			}
		}
	}
	return name, nil
}

// readInitiatorNameFile reads InitiatorName= from a file of open-iscsi's
// format; "" when the file does not exist.
func readInitiatorNameFile(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the initiator name: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") || strings.TrimSpace(k) != "InitiatorName" {
			continue
		}
		v = strings.TrimSpace(v)
		name, err := initiator.NormalizeName(v)
		if err != nil {
			return "", fmt.Errorf("%s: InitiatorName=%s: %w", path, v, err)
		}
		return name, nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return "", fmt.Errorf("%s has no InitiatorName= line; give --initiator-name", path)
}
