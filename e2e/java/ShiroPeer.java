// The real Apache Shiro (Debian's libshiro-java) as a test and benchmark peer for quartet-auth.
//
//   java ShiroPeer implies        stdin: "held<TAB>requested" per line; stdout: true, false or
//                                 error:<message> per line (WildcardPermission, case-insensitive)
//   java ShiroPeer hash <password> <iterations>
//                                 stdout: the password hashed by Shiro's DefaultPasswordService
//                                 (SHA-256, random salt), in $shiro1$ form
//   java ShiroPeer bench <seconds> stdout: permission checks per second on the shared workload
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.apache.shiro.authc.credential.DefaultPasswordService;
import org.apache.shiro.authz.permission.WildcardPermission;
import org.apache.shiro.crypto.hash.DefaultHashService;

public final class ShiroPeer {
    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "implies": implies(); break;
            case "hash": hash(args[1], Integer.parseInt(args[2])); break;
            case "bench": bench(Double.parseDouble(args[1])); break;
            default: throw new IllegalArgumentException("unknown mode " + args[0]);
        }
    }

    private static void implies() throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        StringBuilder out = new StringBuilder();
        String line;
        while ((line = in.readLine()) != null) {
            String[] pair = line.split("\t", -1);
            try {
                boolean result = new WildcardPermission(pair[0]).implies(new WildcardPermission(pair[1]));
                out.append(result).append('\n');
            } catch (IllegalArgumentException e) {
                out.append("error:").append(e.getMessage().replace('\n', ' ')).append('\n');
            }
        }
        System.out.print(out);
    }

    private static void hash(String password, int iterations) {
        DefaultHashService hashes = new DefaultHashService();
        hashes.setHashAlgorithmName("SHA-256");
        hashes.setHashIterations(iterations);
        hashes.setGeneratePublicSalt(true);
        DefaultPasswordService service = new DefaultPasswordService();
        service.setHashService(hashes);
        System.out.println(service.encryptPassword(password));
    }

    /** The workload quartet-auth's benchmark runs too: 50 held permissions, 8 requests. */
    static List<String> held() {
        List<String> held = new ArrayList<>();
        for (int i = 0; i < 50; i++) {
            held.add("service" + i + ":read,write:instance" + i);
        }
        held.add("reports:*:q3");
        return held;
    }

    static String[] requested() {
        return new String[] {"service7:write:instance7", "service49:read:instance49", "reports:export:q3",
            "reports:export:q4", "unknown:read", "service3:delete:instance3", "service0:read", "service12:write:instance13"};
    }

    private static void bench(double seconds) {
        List<WildcardPermission> held = new ArrayList<>();
        for (String p : held()) held.add(new WildcardPermission(p));
        String[] requested = requested();
        long checks = 0;
        int permitted = 0;
        long deadline = System.nanoTime() + (long) (seconds * 1e9);
        long start = System.nanoTime();
        while (System.nanoTime() < deadline) {
            for (int round = 0; round < 1000; round++) {
                // As a realm does per check: parse the requested string, then scan the held ones.
                WildcardPermission wanted = new WildcardPermission(requested[round % requested.length]);
                for (WildcardPermission h : held) {
                    if (h.implies(wanted)) { permitted++; break; }
                }
                checks++;
            }
        }
        double elapsed = (System.nanoTime() - start) / 1e9;
        System.out.printf("%.0f %d%n", checks / elapsed, permitted);
    }
}
