package main

import (
	"context"
	"runtime"
	"runtime/debug"

	"github.com/spf13/pflag"
)

// modulePath is the module iscsictl is part of.
const modulePath = "github.com/goiscsi/iscsi"

// versionInfo is what `iscsictl version` prints: the module's version as
// the Go toolchain recorded it (a tag for `go install ...@v1.2.3`, "(devel)"
// for a build in a work tree) and the VCS state `go build` stamped, when it
// did (not with -buildvcs=false, nor outside a repository).
type versionInfo struct {
	Module    string `json:"module"`
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

func readVersion() versionInfo {
	v := versionInfo{Module: modulePath, Version: "unknown", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Path != "" {
		v.Module = bi.Main.Path
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func defVersion(a *app, _ *pflag.FlagSet) runFunc {
	return func(context.Context, []string) error {
		v := readVersion()
		if a.json {
			a.printJSON(map[string]any{"command": "version", "version": v})
			return nil
		}
		rev := v.Revision
		switch {
		case rev == "":
			rev = "unknown (built without VCS information)"
		case v.Modified:
			rev += " (modified)"
		}
		a.printf("iscsictl %s\nmodule    %s\nrevision  %s\n", v.Version, v.Module, rev)
		if v.Time != "" {
			a.printf("committed %s\n", v.Time)
		}
		a.printf("go        %s %s\n", v.GoVersion, v.Platform)
		return nil
	}
}
