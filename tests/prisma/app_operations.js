// The mobile app's Prisma operations, run by the real Prisma client against DATABASE_URL.
//
//   DATABASE_URL=postgresql://… node app_operations.js <user id>
//
// One run does everything the app does with Prisma for one new user (create and read the
// user, spend a credit, save and list generated images, custom prompts CRUD, the Stripe
// subscription upsert and read, create and poll a generation job) and prints what the client
// returned as one JSON object on stdout. tests/db/test_prisma_client.py asserts on it and on
// the rows it left. Any error exits non-zero with the error on stderr.
"use strict";

const { PrismaClient } = require("@prisma/client");
const { PrismaPg } = require("@prisma/adapter-pg");

async function appOperations(prisma, userId) {
  const out = {};
  const email = `${userId}@example.test`;

  // Sign-up: the app creates the user row with the starting credits.
  out.createdUser = await prisma.user.create({ data: { id: userId, email, credits: 5 } });
  out.foundUser = await prisma.user.findUnique({ where: { id: userId } });
  out.foundByEmail = await prisma.user.findUnique({ where: { email }, select: { id: true } });

  // A generation spends one credit.
  out.decremented = await prisma.user.update({
    where: { id: userId },
    data: { credits: { decrement: 1 } },
  });

  // Generated images: saved one by one, listed newest first.
  out.firstImage = await prisma.generatedImage.create({
    data: { userId, imageUrl: `https://cdn.example.test/${userId}/1.png` },
  });
  out.secondImage = await prisma.generatedImage.create({
    data: {
      imageUrl: `https://cdn.example.test/${userId}/2.png`,
      user: { connect: { id: userId } },
    },
  });
  out.images = await prisma.generatedImage.findMany({
    where: { userId },
    orderBy: { createdAt: "desc" },
  });
  out.imageCount = await prisma.generatedImage.count({ where: { userId } });

  // Custom prompts: create, list, update, delete.
  out.prompt = await prisma.customPrompt.create({
    data: {
      userId,
      promptText: "a watercolor fox in the snow",
      title: "Fox",
      thumbnailUrl: `https://cdn.example.test/${userId}/thumb.png`,
      secondaryImageUrl: `https://cdn.example.test/${userId}/second.png`,
    },
  });
  out.barePrompt = await prisma.customPrompt.create({
    data: { userId, promptText: "just the text" },
  });
  out.promptsBefore = await prisma.customPrompt.findMany({
    where: { userId },
    orderBy: { createdAt: "desc" },
  });
  out.updatedPrompt = await prisma.customPrompt.update({
    where: { id: out.prompt.id },
    data: { title: "Snow fox" },
  });
  out.deletedPrompt = await prisma.customPrompt.delete({ where: { id: out.barePrompt.id } });
  out.promptsAfter = await prisma.customPrompt.findMany({ where: { userId } });

  // Subscription: none yet (the app shows "Free"), then the Stripe webhook's upsert, twice.
  out.subscriptionBefore = await prisma.subscription.findUnique({ where: { userId } });
  const periodEnd = new Date(Date.UTC(2030, 0, 31, 12, 0, 0));
  const stripe = {
    status: "Pro",
    stripeCustomerId: `cus_${userId}`,
    stripeSubscriptionId: `sub_${userId}`,
    priceId: "price_pro_monthly",
    currentPeriodEnd: periodEnd,
  };
  out.subscriptionCreated = await prisma.subscription.upsert({
    where: { userId },
    create: { userId, ...stripe },
    update: stripe,
  });
  out.subscriptionUpdated = await prisma.subscription.upsert({
    where: { userId },
    create: { userId, ...stripe, status: "Canceled" },
    update: { status: "Canceled" },
  });
  out.subscription = await prisma.subscription.findUnique({ where: { userId } });

  // The profile screen: the user with its subscription and images.
  out.profile = await prisma.user.findUnique({
    where: { id: userId },
    include: { subscription: true, generatedImages: { orderBy: { createdAt: "asc" } } },
  });

  // The app's own generation job: created pending, then polled.
  out.job = await prisma.image_generation_jobs.create({
    data: { user_id: userId, input_image_key: `uploads/${userId}/in.png` },
  });
  out.polledJob = await prisma.image_generation_jobs.findUnique({
    where: { id: out.job.id },
    select: { status: true, progress: true, output_image_url: true, error_message: true },
  });
  out.pendingJobs = await prisma.image_generation_jobs.findMany({
    where: { user_id: userId, status: "pending" },
    orderBy: { created_at: "desc" },
  });

  // A spend the app guards with a transaction: read the balance, take a credit.
  out.afterTransaction = await prisma.$transaction(async (tx) => {
    const user = await tx.user.findUniqueOrThrow({ where: { id: userId } });
    if (user.credits < 1) throw new Error("no credits");
    return tx.user.update({ where: { id: userId }, data: { credits: { decrement: 1 } } });
  });

  return out;
}

async function main() {
  const userId = process.argv[2];
  const connectionString = process.env.DATABASE_URL;
  if (!userId || !connectionString) {
    throw new Error("usage: DATABASE_URL=postgresql://… node app_operations.js <user id>");
  }
  const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString }) });
  try {
    const out = await appOperations(prisma, userId);
    out.clientVersion = require("@prisma/client/package.json").version;
    process.stdout.write(JSON.stringify(out) + "\n");
  } finally {
    await prisma.$disconnect();
  }
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
