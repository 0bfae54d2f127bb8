import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/** A small batch job for Laminar's tests: counts to args[0]; fails at 5 if args[1] is "fail". */
public class CountJob {
    public static void main(String[] args) throws Exception {
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setRuntimeMode(RuntimeExecutionMode.BATCH);
        final long n = Long.parseLong(args[0]);
        final boolean fail = args.length > 1 && args[1].equals("fail");
        env.fromSequence(1, n)
            .map(x -> {
                if (fail && x == 5) {
                    throw new IllegalStateException("count job failed at " + x);
                }
                return x * 2;
            })
            .returns(Long.class)
            .print();
        env.execute("laminar-count-job");
    }
}
