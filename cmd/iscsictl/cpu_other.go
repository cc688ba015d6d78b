//go:build !unix

package main

// processCPU is not measured where getrusage does not exist.
func processCPU() (cpuTimes, bool) { return cpuTimes{}, false }
