package images

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox/netns"
	"github.com/podidentity/podidentity/internal/sandbox/relay"
	"github.com/podidentity/podidentity/internal/testenv"
)

// MIC's image, run as the chart runs it (its args, env, azure.json and custom-cloud mounts,
// securityContext) in its own network namespace against a real kube-apiserver and the Azure
// emulator over HTTPS, takes the leader Lease and assigns a bound pod's identity to its node's
// scale set: the image's user can read the root-only azure.json, and its binary reaches ARM and
// Azure AD with the configured CA.
func TestMICAssigns(t *testing.T) {
	requireImages(t)
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	kubeconfig, apiPort := writeKubeconfig(t, env)

	cfg, err := emulator.Load(filepath.Join(chartrender.RepoRoot(), "examples", "emulator", "world.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timing, cfg.Logger = emulator.FastTiming(), testr.New(t)
	e, err := emulator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const micApp, micSecret = "7e3f4a56-1b2c-4d5e-8f90-a1b2c3d4e5f6", "mic-secret" // the world's MIC principal
	const vmss, identity, identityClientID = "aks-nodepool1-12345678-vmss", "demo-identity", "9a2c3b1e-0f0e-4c1f-8e0d-5d4c3b2a1f00"

	var mic *workload
	for _, w := range renderWorkloads(t, map[string]any{"mic": map[string]any{"customCloud": map[string]any{"enabled": true}}}) {
		if w.image == "mic" {
			mic = &w
		}
	}
	if mic == nil {
		t.Fatal("the chart renders no MIC container")
	}
	ctx := testenv.Context(t)
	const release = "podidentity"
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: release}}); err != nil {
		t.Fatal(err)
	}

	// The files the chart mounts from the node, and the emulator's CA beside the kubeconfig.
	testDir := t.TempDir()
	if err := os.Rename(kubeconfig, filepath.Join(testDir, "kubeconfig")); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteCA(filepath.Join(testDir, "emulator-ca.pem")); err != nil {
		t.Fatal(err)
	}
	c := e.Config()
	azureJSON, _ := json.Marshal(map[string]string{"cloud": "AzureStackCloud", "tenantId": c.TenantID, "subscriptionId": c.SubscriptionID,
		"aadClientId": micApp, "aadClientSecret": micSecret, "resourceGroup": c.ResourceGroup, "vmType": "vmss", "location": c.Location})
	cloudJSON, _ := json.Marshal(map[string]string{"name": "AzureStackCloud", "resourceManagerEndpoint": e.ARMURL() + "/",
		"activeDirectoryEndpoint": e.AADURL() + "/", "tokenAudience": emulator.ARMAudience, "caBundle": "/var/run/podidentity-test/emulator-ca.pem"})
	files := map[string][]byte{}
	for _, m := range mic.container.VolumeMounts {
		switch m.Name {
		case "cloud-config":
			files[m.MountPath] = azureJSON
		case "custom-cloud":
			files[m.MountPath] = cloudJSON
		}
	}
	if len(files) != 2 {
		t.Fatalf("MIC's mounts %+v: want cloud-config and custom-cloud", mic.container.VolumeMounts)
	}

	ns := fmt.Sprintf("pi-img-mic-%d", os.Getpid())
	if err := netns.Add(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	defer netns.Delete(context.Background(), ns)
	r, err := relay.Start(testr.New(t), ns, apiPort, port(t, e.ARMURL()), port(t, e.AADURL()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	name := ns // one container per namespace
	_, _, _ = podman(t, "rm", "-f", name)
	opts := append([]string{"run", "-d", "--name", name, "--network", "ns:" + filepath.Join(netns.Dir, ns)}, runLimits()...)
	opts = append(opts, securityArgs(t, *mic)...)
	opts = append(opts, downwardEnv(t, *mic, "podidentity-mic-0", release, "node-1")...)
	opts = append(opts, hostPathMounts(t, *mic, files)...)
	opts = append(opts, "-v", testDir+":/var/run/podidentity-test:ro", built.tag("mic"))
	// --kubeconfig stands in for the in-cluster config a pod would get.
	opts = append(opts, append(mic.container.Args, "--kubeconfig=/var/run/podidentity-test/kubeconfig")...)
	mustPodman(t, opts...)
	defer podman(t, "rm", "-f", name)
	waitReady(t, ns, name, probePort(t, mic.container.Args))

	// Leader: the Lease in the release namespace names this replica.
	poll(t, name, func() error {
		var leases coordinationv1.LeaseList
		if err := env.Client.List(ctx, &leases, client.InNamespace(release)); err != nil {
			return err
		}
		for _, l := range leases.Items {
			if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				return nil
			}
		}
		return fmt.Errorf("no held Lease in %s: %d leases", release, len(leases.Items))
	})

	// A bound pod on a scale-set node: MIC assigns the identity through ARM and says so.
	app := env.Namespace(t)
	env.CreateNode(t, "node-1", testenv.VMSSProviderID(c.SubscriptionID, c.ResourceGroup, vmss, 0))
	env.Create(t, testenv.NewMSIIdentity(app, identity, c.SubscriptionID, c.ResourceGroup, identityClientID))
	env.Create(t, testenv.NewBinding(app, "demo-binding", identity, "demo"))
	env.CreatePod(t, testenv.PodSpec{Namespace: app, Name: "demo", Node: "node-1", Binding: "demo", IP: "10.244.0.5"})
	poll(t, name, func() error {
		var aais aadv1.AzureAssignedIdentityList
		if err := env.Client.List(ctx, &aais); err != nil {
			return err
		}
		var states []string
		for _, a := range aais.Items {
			if a.Spec.Pod == "demo" && a.Spec.PodNamespace == app {
				if a.Status.Status == aadv1.AssignedIDAssigned {
					return nil
				}
				states = append(states, a.Namespace+"/"+a.Name+"="+string(a.Status.Status))
			}
		}
		return fmt.Errorf("no Assigned AzureAssignedIdentity for pod %s/demo yet: %v", app, states)
	})
}

func port(t *testing.T, raw string) int {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("%s has no port", raw)
	}
	return p
}

// poll retries cond for a minute, failing with container name's logs.
func poll(t *testing.T, name string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("%v\n%s logs:\n%s", err, name, containerLogs(t, name))
}
