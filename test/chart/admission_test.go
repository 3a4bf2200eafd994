package chart_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/testenv"
)

const (
	spClientID = "0b6e2f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
	spTenantID = "72f988bf-0000-4000-8000-000000000001"
)

// spIdentity is a type-1 AzureIdentity whose Secret is in secretNS ("" for the identity's own
// namespace) and whose Azure AD endpoint is adEndpoint ("" for the cloud's default).
func spIdentity(ns, name, secretNS, adEndpoint string) *aadv1.AzureIdentity {
	return &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: spClientID, TenantID: spTenantID,
			ClientPassword: corev1.SecretReference{Name: "team-sp", Namespace: secretNS}, ADEndpoint: adEndpoint},
	}
}

// installPolicy renders the chart with vals and applies its ValidatingAdmissionPolicy and binding,
// the binding limited to namespace ns so that tests with different values do not see each other's
// policies (every policy in a cluster applies to every request it matches). It returns once the
// policy refuses a known-bad object: the apiserver loads new policies asynchronously.
func installPolicy(t *testing.T, ns string, vals map[string]any) {
	t.Helper()
	objs := render(t, ns, ns, vals)
	pol, bind := find(objs, "ValidatingAdmissionPolicy", "-azureidentity"), find(objs, "ValidatingAdmissionPolicyBinding", "-azureidentity")
	if pol == nil || bind == nil {
		t.Fatalf("the chart renders no ValidatingAdmissionPolicy and binding for AzureIdentities")
	}
	var b map[string]any
	if err := yaml.Unmarshal([]byte(bind.YAML), &b); err != nil {
		t.Fatal(err)
	}
	b["spec"].(map[string]any)["matchResources"] = map[string]any{"namespaceSelector": map[string]any{
		"matchLabels": map[string]any{"kubernetes.io/metadata.name": ns}}}
	scoped, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	a := newApplier(t)
	a.apply(t, *pol, false)
	a.apply(t, chartrender.Object{Source: bind.Source, Kind: bind.Kind, Name: bind.Name, YAML: string(scoped)}, false)
	if t.Failed() {
		t.FailNow()
	}
	ctx := testenv.Context(t)
	probe := spIdentity(ns, "policy-probe", "", "https://policy-probe.invalid/")
	for {
		err := env.Client.Create(ctx, probe.DeepCopy(), client.DryRunAll)
		if err != nil && strings.Contains(err.Error(), "policy-probe.invalid") {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the admission policy never refused an identity with adEndpoint https://policy-probe.invalid/ (last result: %v)", err)
		}
	}
}

// admit creates id (for real: accepted objects must be storable) and returns the apiserver's error.
func admit(t *testing.T, id *aadv1.AzureIdentity) error {
	t.Helper()
	return env.Client.Create(testenv.Context(t), id)
}

func wantRefused(t *testing.T, id *aadv1.AzureIdentity, wants ...string) {
	t.Helper()
	err := admit(t, id)
	if err == nil {
		t.Errorf("AzureIdentity %s (type %d, clientPassword %+v, adEndpoint %q) was accepted; want it refused",
			id.Name, id.Spec.Type, id.Spec.ClientPassword, id.Spec.ADEndpoint)
		return
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal of %s does not say %q:\n%v", id.Name, w, err)
		}
	}
}

func wantAccepted(t *testing.T, id *aadv1.AzureIdentity) {
	t.Helper()
	if err := admit(t, id); err != nil {
		t.Errorf("AzureIdentity %s (type %d, clientPassword %+v, adEndpoint %q) was refused: %v",
			id.Name, id.Spec.Type, id.Spec.ClientPassword, id.Spec.ADEndpoint, err)
	}
}

// Issue #11 item 2: a service principal naming another namespace's Secret, or sending its secret to
// a host that is not Azure AD, is refused at kubectl apply with NMI's reasons.
func TestAdmissionPolicyRefusesForeignSecretsAndADHosts(t *testing.T) {
	ns, victim := env.Namespace(t), env.Namespace(t)
	installPolicy(t, ns, nil)

	wantRefused(t, spIdentity(ns, "foreign-secret", victim, ""),
		"AzureIdentity foreign-secret: spec.clientPassword.namespace "+victim+" is not the identity's namespace "+ns,
		"service-principal Secrets must be in the identity's own namespace; move the Secret there and clear spec.clientPassword.namespace",
		"nmi.allowCrossNamespaceSecrets")
	cert := spIdentity(ns, "foreign-cert", victim, "")
	cert.Spec.Type = aadv1.ServicePrincipalCertificate
	wantRefused(t, cert, "spec.clientPassword.namespace "+victim)

	for name, ep := range map[string]string{
		"attacker":   "https://attacker.example/",
		"plain-http": "http://login.microsoftonline.com/",
		"with-path":  "https://login.microsoftonline.com/evil/",
		"with-user":  "https://login.microsoftonline.com@attacker.example/",
		"with-query": "https://login.microsoftonline.com/?x=1",
		"lookalike":  "https://login.microsoftonline.com.attacker.example/",
		"other-host": "attacker.example",
		"ftp":        "ftp://login.microsoftonline.com/",
		"with-port":  "https://login.microsoftonline.com:8443/",
	} {
		wantRefused(t, spIdentity(ns, name, "", ep),
			"AzureIdentity "+name+": spec.adEndpoint "+ep+" is not an allowed Azure AD authority",
			"leave it empty or use https://login.microsoftonline.com/", "(allowed: login.microsoftonline.com)",
			"the cluster operator can allow more hosts with nmi.allowedADEndpoints")
	}

	wantAccepted(t, spIdentity(ns, "own-secret", "", ""))
	wantAccepted(t, spIdentity(ns, "own-secret-named", ns, "https://login.microsoftonline.com/"))
	wantAccepted(t, spIdentity(ns, "authority-any-case", "", "https://LOGIN.microsoftonline.com"))
	wantAccepted(t, spIdentity(ns, "bare-host", "", "login.microsoftonline.com")) // NMI reads https://login.microsoftonline.com
	// A managed identity uses neither field, as NMI ignores them for type 0.
	msi := testenv.NewMSIIdentity(ns, "msi", "11111111-2222-3333-4444-555555555555", "rg", spClientID)
	msi.Spec.ClientPassword = corev1.SecretReference{Name: "x", Namespace: victim}
	wantAccepted(t, msi)

	// Update is checked as well: a valid identity cannot be turned into a bad one.
	ok := spIdentity(ns, "update-me", "", "")
	wantAccepted(t, ok)
	ok.Spec.ClientPassword.Namespace = victim
	if err := env.Client.Update(testenv.Context(t), ok); err == nil || !strings.Contains(err.Error(), "is not the identity's namespace") {
		t.Errorf("updating update-me to a Secret in %s: %v, want the policy's refusal", victim, err)
	}
}

func TestAdmissionPolicyFollowsTheOperatorsAllowances(t *testing.T) {
	ns, other := env.Namespace(t), env.Namespace(t)
	installPolicy(t, ns, map[string]any{"nmi": map[string]any{
		"allowCrossNamespaceSecrets": true,
		"allowedADEndpoints":         []any{"https://Login.Contoso.example/", "sts.example:8443"},
	}})
	wantAccepted(t, spIdentity(ns, "foreign-secret", other, ""))
	wantAccepted(t, spIdentity(ns, "contoso", "", "https://login.contoso.example/"))
	wantAccepted(t, spIdentity(ns, "sts-port", "", "https://sts.example:8443/"))
	wantAccepted(t, spIdentity(ns, "authority", "", "https://login.microsoftonline.com/"))
	wantRefused(t, spIdentity(ns, "sts-other-port", "", "https://sts.example/"),
		"(allowed: login.microsoftonline.com, login.contoso.example, sts.example:8443)")
	// An identity that asks for namespaced behaviour never gets another namespace's Secret.
	nsd := spIdentity(ns, "namespaced", other, "")
	nsd.Annotations = map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}
	wantRefused(t, nsd, "spec.clientPassword.namespace "+other+" is not the identity's namespace "+ns,
		"a namespaced identity never uses another namespace's Secret")
}

func TestAdmissionPolicyNamespacedModeNeverAllowsForeignSecrets(t *testing.T) {
	ns, other := env.Namespace(t), env.Namespace(t)
	installPolicy(t, ns, map[string]any{"forceNamespaced": true, "nmi": map[string]any{"allowCrossNamespaceSecrets": true}})
	wantRefused(t, spIdentity(ns, "foreign-secret", other, ""),
		"spec.clientPassword.namespace "+other+" is not the identity's namespace "+ns, "namespaced mode never allows another namespace")
}

func TestAdmissionPolicyInChinaCloud(t *testing.T) {
	ns := env.Namespace(t)
	installPolicy(t, ns, map[string]any{"adminsecret": map[string]any{"cloud": "AzureChinaCloud"}})
	wantAccepted(t, spIdentity(ns, "china", "", "https://login.chinacloudapi.cn/"))
	wantRefused(t, spIdentity(ns, "public", "", "https://login.microsoftonline.com/"),
		"leave it empty or use https://login.chinacloudapi.cn/ (allowed: login.chinacloudapi.cn)")
}

func TestAdmissionPolicyValues(t *testing.T) {
	// Federation's TokenRequest grant needs the admission policy (tokenrequest_test.go).
	if o := find(render(t, "r", "n", map[string]any{"admissionPolicy": map[string]any{"enabled": false},
		"nmi": map[string]any{"federation": map[string]any{"enabled": false}}}), "ValidatingAdmissionPolicy", ""); o != nil {
		t.Errorf("admissionPolicy.enabled=false still renders %s", o.Name)
	}
	// Custom clouds keep their authority in a file on the nodes: the policy allows the empty
	// adEndpoint (NMI's default, the custom authority) and the listed hosts only, and says so.
	objs := render(t, "r", "n", map[string]any{"mic": map[string]any{"customCloud": map[string]any{"enabled": true}}})
	if p := find(objs, "ValidatingAdmissionPolicy", "-azureidentity"); p == nil || !strings.Contains(p.YAML, "(allowed: none)") ||
		!strings.Contains(p.YAML, "custom cloud") {
		t.Errorf("with a custom cloud the policy should allow only an empty adEndpoint and say why:\n%v", p)
	}
}
