package testenv

import (
	"errors"
	"strings"
	"testing"
)

// A test run without the control-plane binaries must fail loudly and say how to get them.
func TestMissingBinariesAreReportedWithTheFix(t *testing.T) {
	t.Setenv("KUBEBUILDER_ASSETS", t.TempDir())
	_, err := AssetsDir()
	if !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("AssetsDir() error = %v, want ErrNoBinaries", err)
	}
	for _, want := range []string{"kube-apiserver", "make test", "hack/control-plane.sh", "KUBEBUILDER_ASSETS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestProviderIDsHaveTheShapeAzureNodesCarry(t *testing.T) {
	if got, want := VMProviderID("sub", "rg", "vm-0"),
		"azure:///subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-0"; got != want {
		t.Errorf("VMProviderID = %s, want %s", got, want)
	}
	if got, want := VMSSProviderID("sub", "rg", "ss", 3),
		"azure:///subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3"; got != want {
		t.Errorf("VMSSProviderID = %s, want %s", got, want)
	}
}
