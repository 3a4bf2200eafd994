package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`

// Every upstream MIC flag, in the single-dash form upstream's Go flag package allowed.
var upstreamFlags = []string{
	"-forceNamespaced=true", "-syncRetryDuration=30s", "-leader-election-instance=a", "-leader-election-namespace=ns",
	"-leader-election-name=n", "-leader-election-duration=15s", "-http-probe-port=8080", "-prometheus-port=8888",
	"-enableProfile=false", "-enableScaleFeatures=true", "-createDeleteBatch=20", "-clientQps=5",
	"-immutable-user-msis=a,b", "-config-map-name=c", "-type-upgrade-status-key=k", "-enable-type-upgrade=true",
	"-update-user-msi-max-retry=2", "-update-user-msi-retry-interval=1s", "-identity-assignment-reconcile-interval=3m",
	"-cloudconfig=", "-v=2", "--log-format=json", "--custom-user-agent=x",
}

func TestEveryUpstreamFlagIsAccepted(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-kubeconfig=" + kc}, upstreamFlags...)
	// Without MIC_POD_NAMESPACE, run stops right after parsing and building the client config.
	err := run(context.Background(), args, func(string) string { return "" }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "MIC_POD_NAMESPACE") {
		t.Fatalf("run = %v, want the MIC_POD_NAMESPACE error (flags must all parse)", err)
	}
}

func TestUnknownFlagAndBadValuesAreRefused(t *testing.T) {
	if err := run(context.Background(), []string{"--no-such-flag"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Fatal("an unknown flag must be an error")
	}
	if err := run(context.Background(), []string{"--clientQps=0"}, func(string) string { return "" }, io.Discard); err == nil || !strings.Contains(err.Error(), "clientQps") {
		t.Fatalf("--clientQps=0: err = %v, want one naming the flag", err)
	}
}

func TestMissingAzureConfigNamesWhatToSet(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"--kubeconfig", kc}, func(k string) string {
		if k == "MIC_POD_NAMESPACE" {
			return "kube-system"
		}
		return ""
	}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "subscriptionId") {
		t.Fatalf("run = %v, want an error naming the missing subscriptionId", err)
	}
}
