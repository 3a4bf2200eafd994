// Package e2e runs podidentity end to end in the sandbox (internal/sandbox): a real control
// plane, emulated Azure, nodes and pods in their own network namespaces, MIC and NMI as
// processes. Every token request is made by the probe client inside a pod's namespace, so it
// crosses veth -> iptables DNAT -> NMI -> the emulator's IMDS/AAD, as on a real node.
//
// One sandbox is shared by the whole package (TestMain); tests run in parallel, each in its own
// Kubernetes namespace with its own Azure identities. The sandbox needs root, iproute2 and
// iptables; without them the package fails with a message naming the fix.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox"
	"github.com/podidentity/podidentity/internal/sandbox/proc"
)

// sb is the package's shared sandbox.
var sb *sandbox.Sandbox

// Service principal for the type-1 identity scenario (added to the emulated world).
const (
	spAppID  = "5b0c5d6e-7f80-4a1b-9c2d-3e4f5a6b7c8d"
	spSecret = "e2e-sp-secret"
)

// An identity MIC is told never to remove (--immutable-user-msis takes client IDs).
const (
	immutableName     = "e2e-immutable"
	immutableClientID = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
)

// modesNode is the extra node whose NMI runs with --set-retry-after-header and
// --block-instance-metadata (a standalone VM of its own).
const modesNode = "aks-nmimodes-12345678-0"

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// options are the sandbox settings of the suite: fast emulated Azure, short NMI waits and client
// retries, MIC's Azure reconcile every few seconds (so out-of-band changes heal within a test).
func options() sandbox.Options {
	return sandbox.Options{
		Timing:      sandbox.TimingFast,
		RepoRoot:    repoRoot(),
		TempRoot:    os.TempDir(),
		MICReplicas: 2,
		NMI:         os.Getenv("E2E_DEV_NO_NMI") == "",
		MICArgs: []string{
			"--identity-assignment-reconcile-interval=5s", "--batch-idle=200ms", "--batch-max=2s",
			"--leader-election-duration=4s", "--arm-poll-interval=200ms",
			"--immutable-user-msis=" + immutableClientID,
		},
		NMIArgs: []string{
			"--retry-attempts-for-created=8", "--retry-attempts-for-assigned=8", "--find-identity-retry-interval=1",
		},
		// One node whose NMI runs the optional modes, so their scenarios do not change what the
		// parallel tests on the default nodes see (it is tainted: only pods naming it run there).
		ExtraNodes: []sandbox.NodeSpec{{Name: modesNode, NMIArgs: []string{"--set-retry-after-header", "--block-instance-metadata"}},
			{Name: saRequiredNode, NMIArgs: []string{"--require-service-account-bindings"}},
			{Name: wiNode, NMIArgs: []string{"--honor-workload-identity-annotations"}}},
		ProbeArgs:      []string{"--retries=4", "--retry-delay=500ms", "--retry-max-delay=2s", "--request-timeout=60s"},
		RestartBackoff: time.Second,
		Demo:           true,
		DemoReplicas:   3,
		Verbosity:      4,
		StartTimeout:   3 * time.Minute,
		World: func(c *emulator.Config) {
			c.ServicePrincipals = append(c.ServicePrincipals, emulator.PrincipalConfig{AppID: spAppID, Secrets: []string{spSecret}})
			c.UserAssignedIdentities = append(c.UserAssignedIdentities, emulator.IdentityConfig{Name: immutableName, ClientID: immutableClientID})
		},
	}
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	o := options()
	o.Out = os.Stderr
	var err error
	sb, err = sandbox.Start(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: starting the sandbox failed: %v\n", err)
		return 1
	}
	// The demo (what `make sandbox` shows) also gives the suite a binding every node's VM/VMSS
	// carries an identity for.
	if err := sb.RunDemo(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: the sandbox demo failed: %v\n", err)
		dumpLogs()
		_ = sb.Close()
		return 1
	}
	code := m.Run()
	if code != 0 {
		dumpLogs()
	}
	if err := sb.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: stopping the sandbox left something behind: %v\n", err)
		return 1
	}
	return code
}

// dumpLogs prints the tail of MIC's and NMI's logs after a failure (the run directory is
// removed at the end).
func dumpLogs() {
	for _, c := range sb.MIC {
		fmt.Fprintf(os.Stderr, "==== %s (last 40 lines)\n%s\n", c.Name, proc.TailFile(c.Log(), 40))
	}
	for _, n := range sb.Nodes {
		if n.NMI != nil {
			fmt.Fprintf(os.Stderr, "==== %s on %s (last 40 lines)\n%s\n", n.NMI.Name, n.Name, proc.TailFile(n.NMI.Log(), 40))
		}
	}
}
