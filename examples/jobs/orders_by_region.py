"""PySpark job of examples/compute_engines.yaml: orders per region over generated data.

spark-submit jobs/orders_by_region.py OUTPUT_DIR DAY
"""

import sys

from pyspark.sql import SparkSession

output, day = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.getOrCreate()
orders = spark.range(300_000).selectExpr(
    "element_at(array('north', 'south', 'east', 'west'), cast(id % 4 AS int) + 1) AS region",
    "(id * 7919) % 1000 / 10.0 AS amount",
)
summary = orders.groupBy("region").agg({"amount": "sum", "*": "count"})
summary = summary.withColumnRenamed("sum(amount)", "revenue").withColumnRenamed(
    "count(1)", "orders"
)
summary.selectExpr(
    "region", "orders", "round(revenue, 2) AS revenue", f"'{day}' AS day"
).write.mode("overwrite").parquet(output)
spark.stop()
