package chart_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podidentity/podidentity/internal/testenv"
)

// startRoleAggregation runs the real kube-controller-manager with only its ClusterRole aggregation
// controller: without it the chart's aggregate-to-* labels would change nothing on the built-in
// view, edit and admin roles, and a test of what a namespace editor may do would prove nothing.
func startRoleAggregation(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	cfg := env.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "kube-controller-manager.log"))
	if err != nil {
		t.Fatal(err)
	}
	// --secure-port=0: no serving port, so nothing can clash with other control planes here.
	cmd := exec.Command(filepath.Join(env.AssetsDir, "kube-controller-manager"),
		"--kubeconfig="+kubeconfig, "--controllers=clusterrole-aggregation", "--leader-elect=false",
		"--secure-port=0", "--use-service-account-credentials=false", "--v=1")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting kube-controller-manager: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("kube-controller-manager log:\n%s", b)
		}
		_ = logFile.Close()
	})
	select {
	case err := <-exited:
		b, _ := os.ReadFile(logFile.Name())
		t.Fatalf("kube-controller-manager exited at once (%v):\n%s", err, b)
	case <-time.After(500 * time.Millisecond):
	}
}

func bindUser(t *testing.T, namespace, user, clusterRole string) {
	t.Helper()
	env.Create(t, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	})
}

// Issue #11 item 7: with the opt-in user-facing roles, namespace editors and admins manage
// bindings but can never create an AzurePodIdentityException (which lets pods reach IMDS with
// every identity on their node) nor an AzureIdentity (which can name any identity MIC can assign).
func TestNamespaceEditorsCannotExemptPodsOrCreateIdentities(t *testing.T) {
	startRoleAggregation(t)
	release := env.Namespace(t)
	a := newApplier(t)
	for _, o := range render(t, release, release, map[string]any{"rbac": map[string]any{"createUserFacingClusterRoles": true}}) {
		if o.Source == "podidentity/templates/user-roles.yaml" {
			a.apply(t, o, false)
		}
	}
	team := env.Namespace(t)
	manager := release + "-podidentity-identity-manager"
	roles := map[string]string{"viewer": "view", "editor": "edit", "admin": "admin", "manager": manager}
	for user, role := range roles {
		bindUser(t, team, user, role)
	}
	type check struct {
		user, verb, resource string
		want                 bool
	}
	checks := []check{
		{"viewer", "list", "azureidentities", true},
		{"viewer", "get", "azurepodidentityexceptions", true},
		{"viewer", "create", "azureidentitybindings", false},
		{"editor", "create", "azureidentitybindings", true},
		{"editor", "delete", "azureidentitybindings", true},
		{"editor", "get", "azurepodidentityexceptions", true},
		{"admin", "update", "azureidentitybindings", true},
		{"manager", "create", "azureidentities", true},
		{"manager", "update", "azureidentitybindings", true},
	}
	for _, user := range []string{"editor", "admin", "manager"} {
		for _, verb := range []string{"create", "update", "patch", "delete"} {
			checks = append(checks, check{user, verb, "azurepodidentityexceptions", false})
			if user != "manager" {
				checks = append(checks, check{user, verb, "azureidentities", false})
			}
		}
		checks = append(checks, check{user, "create", "azureassignedidentities", false})
	}
	can := func(c check) bool {
		return canUser(t, c.user, nil, c.verb, aad, c.resource, team, "")
	}
	// Aggregation and the authorizer's cache both lag: wait until every grant is visible.
	ctx := testenv.Context(t)
	for ctx.Err() == nil {
		visible := true
		for _, c := range checks {
			if c.want && !can(c) {
				visible = false
				break
			}
		}
		if visible {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range checks {
		if got := can(c); got != c.want {
			t.Errorf("%s (%s in %s) can %s %s: %v, want %v", c.user, roles[c.user], team, c.verb, c.resource, got, c.want)
		}
	}
}
