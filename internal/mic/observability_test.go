package mic_test

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// One valid and one refused identity on a pod: the valid one brings a Normal event, the refused
// one a Warning saying why (ARM's error code) and what to do, on both pod and binding; /metrics
// shows the planning passes, the ARM calls by operation and result, the assignment latency and
// the quarantine, with labels from small fixed sets only.
func TestEventsAndMetricsOfAnAssignmentAndAQuarantine(t *testing.T) {
	bad := denied + "x"
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "good"}, {Name: bad}}})
	addr := freeAddr(t)
	w.startMIC(micOpts{metricsAddr: addr})
	w.identity("good")
	w.identity(bad)
	w.binding("b-good", "good", "sel")
	w.binding("b-bad", bad, "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "good"): assigned, w.aaiName("p", bad): created})

	w.waitEvents(map[eventWant][]string{
		{"Pod", "p", "Normal", "IdentityAssigned"}:                       {"good"},
		{"AzureIdentityBinding", "b-good", "Normal", "IdentityAssigned"}: {"good", "1 pod(s)", "pool", w.ns + "/p"},
		// Why (ARM's code) and what to do (the role to grant).
		{"Pod", "p", "Warning", "AssignmentFailed"}:                      {bad, "LinkedAuthorizationFailed", "Managed Identity Operator"},
		{"AzureIdentityBinding", "b-bad", "Warning", "AssignmentFailed"}: {bad, "LinkedAuthorizationFailed", "Managed Identity Operator"},
	})
	// The valid identity never gets a Warning: the refused one did not hold it back.
	var l eventsv1.EventList
	if err := w.cl.List(testenv.Context(t), &l, client.InNamespace(w.ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range l.Items {
		if e.Type == "Warning" && strings.Contains(e.Note, "identity "+w.ns+"/good:") {
			t.Fatalf("Warning event about the valid identity: %s %s", e.Reason, e.Note)
		}
	}

	// value returns the sample of name{labels} (labels in the exposition's order), or -1.
	var body string
	value := func(series string) float64 {
		for _, line := range strings.Split(body, "\n") {
			if rest, ok := strings.CutPrefix(line, series+" "); ok {
				v, err := strconv.ParseFloat(rest, 64)
				if err == nil {
					return v
				}
			}
		}
		return -1
	}
	positive := []string{
		"aadpodidentity_mic_cycle_duration_seconds_count",
		`aadpodidentity_cloud_provider_operations_duration_seconds_count{operation_type="vmss_get"}`,
		`aadpodidentity_cloud_provider_operations_duration_seconds_count{operation_type="vmss_update"}`,
		`aadpodidentity_mic_arm_calls_total{operation_type="vmss_update",result="ok"}`,
		`aadpodidentity_mic_arm_calls_total{operation_type="vmss_update",result="identity_refused"}`,
		"aadpodidentity_mic_assignment_latency_seconds_count",
		"aadpodidentity_mic_quarantined_identities",
	}
	eventually(t, "MIC's metrics on /metrics", func() (bool, string) {
		code, b := get(t, "http://"+addr+"/metrics")
		if code != http.StatusOK {
			return false, fmt.Sprintf("%d %s", code, b)
		}
		body = b
		var zero []string
		for _, s := range positive {
			if value(s) <= 0 {
				zero = append(zero, fmt.Sprintf("%s = %v", s, value(s)))
			}
		}
		return len(zero) == 0, strings.Join(zero, "; ")
	})

	// Bounded labels: every label of MIC's series comes from a fixed set; no pod, identity,
	// namespace or resource ID ever becomes a label value.
	allowed := map[string][]string{
		"operation_type": {"vm_get", "vm_update", "vmss_get", "vmss_update",
			"assigned_identity_addition", "assigned_identity_update", "update_azure_assigned_identity_status", "assigned_identity_deletion"},
		"result": {"ok", "throttled", "not_found", "conflict", "identity_refused", "error"},
	}
	labelRE := regexp.MustCompile(`([a-z_]+)="([^"]*)"`)
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "aadpodidentity_") {
			continue
		}
		for _, m := range labelRE.FindAllStringSubmatch(line, -1) {
			if m[1] == "le" {
				continue
			}
			if vals, ok := allowed[m[1]]; !ok || !slices.Contains(vals, m[2]) {
				t.Errorf("unbounded or unknown label %s=%q in %s", m[1], m[2], line)
			}
		}
	}
}
